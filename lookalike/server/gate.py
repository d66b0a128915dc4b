"""The pure ASGI middleware in front of every route (:class:`Gate`).

In order, for each HTTP request:

1. time it for ``/metrics`` (by route template, method and status);
2. answer 404 to a path or query parameter that looks like a file path (``..``, slashes, backslashes,
   NUL) before routing;
3. refuse a malformed ``Content-Length`` (400) or one over the upload cap plus multipart overhead (413);
4. check the optional bearer token (or the same-site cookie that ``/?token=`` sets); ``/health`` never
   needs it;
5. admit at most ``max_uploads`` uploads (``POST /api/search``) at once: the next waits at most
   ``admission_wait`` seconds, then gets 503 with ``Retry-After`` (see :mod:`.admission`);
6. while the body is read: count it (413 as soon as it passes the cap, also without ``Content-Length``)
   and give it ``body_timeout`` seconds in all (408, and the connection is closed);
7. answer ``HEAD`` as the ``GET`` of the same URL without the body (load balancers probe ``HEAD /health``).

Every refusal is one line of JSON, ``{"error": "..."}``. The deadline for the request head is the HTTP
protocol's (:mod:`.transport`): the middleware only sees requests whose head has arrived.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import MutableHeaders

from .admission import busy_response
from .responses import NOT_FOUND, error_response, looks_like_path
from .uploads import too_large_message

if TYPE_CHECKING:  # pragma: no cover
    from .state import ServerState

TOKEN_COOKIE = "lookalike_token"
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and the small fields around the image
UPLOAD_ROUTE = ("POST", "/api/search")  # the requests that go through upload admission
TIMEOUT_MESSAGE = "request body timeout: the upload did not arrive within {:g} s"


class _Abort(Exception):
    """Raised from ``receive`` to stop reading a body; the middleware answers ``response`` instead."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class Gate:
    """Pure ASGI middleware: metrics timing, path screening, the token, upload admission, the body-size
    cap, the body deadline and ``HEAD``."""

    def __init__(self, app: Callable[..., Awaitable[None]], state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        settings = state.settings
        start = time.perf_counter()
        method = scope.get("method", "?")
        head = method == "HEAD"
        if head:  # routed as GET; the body is dropped below (uvicorn drops it too)
            scope = dict(scope, method="GET")
        status = 500
        aborted: Response | None = None  # set when receive stopped a body: the answer to give instead
        replaced = False
        body_done = False
        received = 0
        limit = settings.max_upload_bytes + FORM_OVERHEAD
        deadline = time.monotonic() + settings.body_timeout

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, replaced
            if (
                aborted is not None
                and message["type"] == "http.response.start"
                and not replaced
                and message["status"] != aborted.status_code
            ):
                # the framework turned the aborted read into another error: say what happened
                replaced = True
                status = aborted.status_code
                await aborted(scope, receive, send_wrapper_raw)
                return
            if replaced:
                return
            await send_wrapper_raw(message)

        async def send_wrapper_raw(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
            elif head and message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        async def guarded_receive() -> dict[str, Any]:
            nonlocal aborted, received, body_done
            if body_done:  # the body is in: waiting for a disconnect has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                aborted = error_response(408, TIMEOUT_MESSAGE.format(settings.body_timeout),
                                         headers={"Connection": "close"})  # fmt: skip
                raise _Abort(aborted) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    body_done = True
                if received > limit:
                    aborted = error_response(413, too_large_message(settings.max_upload_bytes))
                    raise _Abort(aborted)
            else:
                body_done = True
            return message

        slot: int | None = None
        try:
            early = self._screen(scope)
            if early is None and (method, scope.get("path")) == UPLOAD_ROUTE and state.uploads is not None:
                slot = await state.uploads.acquire(wait=settings.admission_wait)
                if slot is None:
                    early = busy_response(settings.admission_wait)
            if early is not None:
                await early(scope, receive, send_wrapper)
            else:
                try:
                    await self.app(scope, guarded_receive, send_wrapper)
                except _Abort:
                    if status == aborted.status_code or replaced:  # type: ignore[union-attr]
                        return
                    if status != 500:  # a response had begun: all that is left is to drop the connection
                        raise
                    # the aborted read escaped the framework: answer here
                    replaced = True
                    status = aborted.status_code  # type: ignore[union-attr]
                    await aborted(scope, receive, send_wrapper_raw)  # type: ignore[misc]
        finally:
            if slot is not None and state.uploads is not None:
                state.uploads.release(slot)
            route = scope.get("route")  # set by the router on a match (full, or partial for a 405)
            route = getattr(route, "path", "other") if route is not None else state.route_of(scope)
            state.metrics.observe_request(method, route, status, time.perf_counter() - start)

    def _screen(self, scope: dict[str, Any]) -> Response | None:
        """A response to send instead of routing the request, or None to go on."""
        state = self.state
        path = scope.get("path", "")
        if "\\" in path or "\x00" in path or ".." in path.split("/") or "%2e%2e" in path.lower():
            return error_response(404, NOT_FOUND)
        raw_qs = scope.get("query_string", b"").decode("latin-1")
        query_token = None
        try:
            pairs = parse_qsl(raw_qs, keep_blank_values=True, strict_parsing=False)
        except ValueError:
            return error_response(404, NOT_FOUND)
        for key, value in pairs:
            if key == "token":
                query_token = value
                continue
            if looks_like_path(key) or looks_like_path(value):
                return error_response(404, NOT_FOUND)
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return error_response(400, "malformed Content-Length header")
            if int(length) > state.settings.max_upload_bytes + FORM_OVERHEAD:
                return error_response(413, too_large_message(state.settings.max_upload_bytes))
        token = state.settings.token
        if token is None or path == "/health":
            return None
        if path == "/" and query_token is not None and hmac.compare_digest(query_token.encode(), token.encode()):
            # Opening /?token=… in a browser: keep the token in a same-site cookie and drop it from the URL.
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
            return response
        given = None
        auth = _header(scope, b"authorization")
        if auth and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        elif (cookie := _cookie(scope, TOKEN_COOKIE)) is not None:
            given = cookie
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            return None
        return error_response(
            401,
            "this server needs a token: send 'Authorization: Bearer <token>', or open /?token=<token> in a browser",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _cookie(scope: dict[str, Any], name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
