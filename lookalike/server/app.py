"""The FastAPI app: the page, the JSON API, thumbnails, health and metrics.

Routes (documented at ``/docs``, schema at ``/openapi.json``):

- ``GET /``: the page (``static/index.html`` + ``app.js`` + ``style.css``; no external URLs);
- ``POST /api/search``: multipart ``image`` (+ ``k``, ``metric``) -> JSON hits;
- ``GET /api/search?id=…``: search by an indexed image;
- ``GET /api/images``: the collection, a page of ids at a time; ``GET /api/info``: the index;
- ``GET /api/images/{id}`` and ``GET /thumbs/{id}``: an indexed file or its cached thumbnail, by id only;
- ``GET /health`` (never needs the token) and ``GET /metrics`` (Prometheus text).

A pure ASGI middleware (:class:`Gate`) sits in front of everything: it times every request for
``/metrics``, answers 404 to any path or parameter that looks like a file path (``..``, slashes,
backslashes, NUL), checks the optional bearer token, and refuses request bodies over the upload limit
with 413 while they are read. Every error is one line of JSON: ``{"error": "..."}``.

This module imports FastAPI at the top; it is imported only through :func:`lookalike.server.create_app`.
"""

import gc
import hashlib
import hmac
import json
import logging
import math
import mimetypes
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .._version import __version__
from ..errors import LookalikeError
from ..search import Hit, Index
from .engine import SearchEngine
from .settings import METRICS, ServerSettings
from .telemetry import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .telemetry import Metrics
from .thumbs import ThumbnailCache, ThumbnailError, original_file
from .uploads import UploadError, decode_upload, too_large_message

logger = logging.getLogger(__name__)

TOKEN_COOKIE = "lookalike_token"
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and the small fields around the image
INLINE_DECODE_BYTES = 256 * 1024  # smaller uploads are decoded on the event loop (a thread hop costs more)
NOT_FOUND = "not found"
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SCORE_MEANING = {"cosine": "cosine similarity (higher is closer)", "euclidean": "euclidean distance (lower is closer)"}


# ----------------------------------------------------------------------------------------- schemas
class ErrorOut(BaseModel):
    error: str = Field(description="What went wrong, in one line.")


class HitOut(BaseModel):
    rank: int = Field(description="1-based position in the ranking.")
    id: int = Field(description="The image's id in the index catalog.")
    path: str = Field(description="The image's path relative to the indexed folder.")
    label: str | None = Field(description="The image's sub-folder, if any.")
    score: float = Field(description="Cosine similarity (higher is closer) or euclidean distance (lower is closer).")
    thumbnail: str = Field(description="URL of a small cached thumbnail.")
    image: str = Field(description="URL of the original file.")


class QueryOut(BaseModel):
    kind: str = Field(description="upload or id")
    id: int | None = None
    path: str | None = None
    label: str | None = None
    thumbnail: str | None = None
    format: str | None = Field(default=None, description="The uploaded file's real format.")
    width: int | None = None
    height: int | None = None
    bytes: int | None = None


class SearchOut(BaseModel):
    query: QueryOut
    k: int = Field(description="Results asked for, after clamping.")
    metric: str
    score: str = Field(description="What the scores mean.")
    notice: str | None = Field(default=None, description="Set when k was clamped.")
    took_ms: float = Field(description="Server time for the search, in milliseconds.")
    hits: list[HitOut]


class ImageOut(BaseModel):
    id: int
    path: str
    label: str | None
    thumbnail: str
    image: str


class PageOut(BaseModel):
    page: int
    pages: int
    per_page: int
    total: int
    images: list[ImageOut]
    notice: str | None = None


class ModelOut(BaseModel):
    preset: str | None
    architecture: str | None
    fingerprint: str
    embedding_dim: int | None
    image_size: int | None
    channels: int | None
    precision: str | None


class InfoOut(BaseModel):
    images: int
    labels: int = Field(description="Distinct sub-folders among the images.")
    folder: str = Field(description="Name of the indexed folder.")
    extractor: str = Field(description="What turns an image into a vector.")
    model: ModelOut
    indexed_at: str | None = Field(description="When the index was built (ISO 8601, UTC).")
    skipped: int = Field(description="Unreadable files left out when indexing.")
    index_version: str | None = Field(description="lookalike version that built the index.")
    server_version: str
    metrics: list[str]
    default_k: int
    max_k: int
    max_upload_bytes: int
    page_size: int
    token_required: bool


class HealthOut(BaseModel):
    status: str
    images: int


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Bad input: a corrupt or truncated image, a decompression bomb, a bad k."},
    401: {"model": ErrorOut, "description": "The server has a token and the request did not give it."},
    404: {"model": ErrorOut, "description": "No such image or route (also any parameter that looks like a path)."},
}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    413: {"model": ErrorOut, "description": "The upload is larger than the limit."},
    415: {"model": ErrorOut, "description": "Not an image, or an image type the server does not accept."},
}


# ------------------------------------------------------------------------------------------- state
_frozen_lock = threading.Lock()
_frozen_servers = 0  # servers of this process that froze their start-up objects and still run


def _freeze_start_up() -> None:
    """Hide every object alive now from the garbage collector (``gc.freeze``) while a server runs.

    What a server loads at start-up (the catalog, the model, the libraries: some 200,000 objects for
    50,000 images) lives as long as it does. Left in sight, every full collection walks all of it with
    the GIL held: under load one came about every two seconds and stopped every thread for 100-250 ms,
    which was the server's p99 latency. Frozen, a full collection takes a few milliseconds.
    """
    global _frozen_servers
    with _frozen_lock:
        gc.collect()
        gc.freeze()
        _frozen_servers += 1


def _thaw() -> None:
    """Give the frozen objects back to the collector when the last running server stops."""
    global _frozen_servers
    with _frozen_lock:
        _frozen_servers -= 1
        if _frozen_servers == 0:
            gc.unfreeze()


class ServerState:
    """Everything the routes share; filled by the lifespan."""

    def __init__(self, index: Index | Path, settings: ServerSettings) -> None:
        self.settings = settings
        self.index_dir = index if isinstance(index, Path) else index.directory
        self.index: Index | None = index if isinstance(index, Index) else None
        self.metrics = Metrics()
        self.engine: SearchEngine | None = None
        self.thumbs: ThumbnailCache | None = None
        self.ids: list[int] = []
        self.label_count = 0
        self.static = {name: _read_static(name) for name in STATIC_FILES}
        self.app: FastAPI | None = None
        self.started = time.time()
        self.frozen = False  # objects loaded at start-up are hidden from the garbage collector (gc.freeze)

    async def open(self) -> None:
        if self.index is None:
            assert self.index_dir is not None
            self.index = await run_in_threadpool(Index.load, self.index_dir)
        index = self.index
        self.ids = sorted(index.entries)
        self.label_count = len({e.label for e in index.entries.values() if e.label is not None})
        self.thumbs = ThumbnailCache(index, self.settings.thumb_size, self.settings.cache_dir)
        self.engine = SearchEngine(index, max_batch=self.settings.max_batch, metrics=self.metrics)
        await self.engine.start(warm_up=self.settings.warm_up)
        _freeze_start_up()
        self.frozen = True
        logger.info("serving %d images; thumbnails cached in %s", len(index), self.thumbs.directory)

    async def close(self) -> None:
        if self.frozen:
            _thaw()
            self.frozen = False
        if self.engine is not None:
            await self.engine.stop()

    # ----------------------------------------------------------------------------------- helpers
    def route_of(self, scope: dict[str, Any]) -> str:
        """The route template a request matches (bounded label set for /metrics)."""
        partial = None
        if self.app is not None:
            for route in self.app.router.routes:
                match, _ = route.matches(scope)
                if match == Match.FULL:
                    return getattr(route, "path", "other")
                if match == Match.PARTIAL and partial is None:
                    partial = getattr(route, "path", "other")
        return partial or "unmatched"

    def entry_urls(self, id_: int) -> tuple[str, str]:
        assert self.thumbs is not None
        return f"/thumbs/{id_}?v={self.thumbs.version(id_)}", f"/api/images/{id_}"

    def hit_out(self, hit: Hit) -> dict[str, Any]:
        assert self.index is not None
        thumb, image = self.entry_urls(hit.id)
        e = self.index.entries[hit.id]
        return {"rank": hit.rank, "id": hit.id, "path": e.path, "label": e.label, "score": hit.score,
                "thumbnail": thumb, "image": image}  # fmt: skip

    def hit_json(self, hit: Hit) -> str:
        """``json_text(self.hit_out(hit))`` written directly: a search's hits are most of the server's JSON."""
        assert self.index is not None and self.thumbs is not None
        score = hit.score
        if not math.isfinite(score):  # not JSON: let the encoder refuse it as before
            return json_text(self.hit_out(hit))
        e = self.index.entries[hit.id]
        label = "null" if e.label is None else _json_str(e.label)
        thumb = _json_str(f"/thumbs/{hit.id}?v={self.thumbs.version(hit.id)}")
        return (
            f'{{"rank":{int(hit.rank)},"id":{int(hit.id)},"path":{_json_str(e.path)},"label":{label},'
            f'"score":{float.__repr__(float(score))},"thumbnail":{thumb},"image":"/api/images/{int(hit.id)}"}}'
        )

    def search_response(
        self, query: dict[str, Any], k: int, metric: str, notice: str | None, took_ms: float, hits: list[Hit]
    ) -> Response:
        """The JSON of a search (shaped as :class:`SearchOut`, built directly: no validation pass), byte for
        byte what ``JSONResponse`` writes for the same content."""
        head = json_text(
            {
                "query": query,
                "k": k,
                "metric": metric,
                "score": SCORE_MEANING[metric],
                "notice": notice,
                "took_ms": round(took_ms, 2),
                "hits": [],
            }
        )
        assert head.endswith('"hits":[]}')
        body = head[:-3] + "[" + ",".join([self.hit_json(h) for h in hits]) + "]}"
        return Response(body.encode("utf-8"), media_type="application/json")

    def image_out(self, id_: int) -> dict[str, Any]:
        assert self.index is not None
        e = self.index.entries[id_]
        thumb, image = self.entry_urls(id_)
        return {"id": id_, "path": e.path, "label": e.label, "thumbnail": thumb, "image": image}

    def clamp_k(self, k: int | None) -> tuple[int, str | None]:
        assert self.index is not None
        s = self.settings
        if k is None:
            return min(s.default_k, s.max_k, len(self.index)), None
        limit = min(s.max_k, len(self.index))
        if k < 1:
            return 1, f"k must be at least 1; showing 1 result (asked for {k})"
        if k > limit:
            why = f"the most this server returns is {s.max_k}" if s.max_k <= len(self.index) else (
                f"the index holds {len(self.index)} images")  # fmt: skip
            return limit, f"k clamped to {limit} ({why}; asked for {k})"
        return k, None


def _swagger_assets() -> Path | None:
    """Swagger UI's files from the ``swagger-ui-bundle`` package, so /docs works offline; None without it."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(str(swagger_ui_path))
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def _offline_docs(app: FastAPI) -> None:
    """Serve /docs from the locally installed Swagger UI (FastAPI's default page loads it from a CDN)."""
    assets = _swagger_assets()
    if assets is None:
        return
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="lookalike API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def _read_static(name: str) -> tuple[bytes, str]:
    data = (resources.files("lookalike.server") / "static" / name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


_json_str = json.encoder.encode_basestring  # a str as JSON with ensure_ascii=False, as JSONResponse writes it


def json_text(content: Any) -> str:
    """``content`` as JSONResponse renders it (compact, UTF-8 text, no NaN), before encoding."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def _looks_like_path(value: str) -> bool:
    return ".." in value or "/" in value or "\\" in value or "\x00" in value


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def _parse_id(text: str) -> int | None:
    """An id from a path parameter: plain decimal digits only (anything else is 'not found')."""
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


# ------------------------------------------------------------------------------------- middleware
class Gate:
    """Pure ASGI middleware: metrics timing, path screening, the token, and the body-size cap."""

    def __init__(self, app: Callable[..., Awaitable[None]], state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        start = time.perf_counter()
        status = 500
        over_limit = False
        replaced = False
        received = 0
        limit = state.settings.max_upload_bytes + FORM_OVERHEAD

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, replaced
            if over_limit and message["type"] == "http.response.start" and message["status"] != 413:
                replaced = True  # the framework turned the aborted read into another error: say 413
                response = _error(413, too_large_message(state.settings.max_upload_bytes))
                status = 413
                await response(scope, receive, send)
                return
            if replaced:
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        async def capped_receive() -> dict[str, Any]:
            nonlocal over_limit, received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over_limit = True
                    raise HTTPException(413, too_large_message(state.settings.max_upload_bytes))
            return message

        try:
            early = self._screen(scope)
            if early is not None:
                await early(scope, receive, send_wrapper)
            else:
                try:
                    await self.app(scope, capped_receive, send_wrapper)
                except HTTPException:
                    if not over_limit or status == 413 or replaced:
                        raise
                    # the aborted read escaped the framework: answer 413 here
                    status = 413
                    await _error(413, too_large_message(state.settings.max_upload_bytes))(scope, receive, send)
        finally:
            route = scope.get("route")  # set by the router on a match (full, or partial for a 405)
            route = getattr(route, "path", "other") if route is not None else state.route_of(scope)
            state.metrics.observe_request(scope.get("method", "?"), route, status, time.perf_counter() - start)

    def _screen(self, scope: dict[str, Any]) -> Response | None:
        """A response to send instead of routing the request, or None to go on."""
        state = self.state
        path = scope.get("path", "")
        if "\\" in path or "\x00" in path or ".." in path.split("/") or "%2e%2e" in path.lower():
            return _error(404, NOT_FOUND)
        raw_qs = scope.get("query_string", b"").decode("latin-1")
        query_token = None
        try:
            pairs = parse_qsl(raw_qs, keep_blank_values=True, strict_parsing=False)
        except ValueError:
            return _error(404, NOT_FOUND)
        for key, value in pairs:
            if key == "token":
                query_token = value
                continue
            if _looks_like_path(key) or _looks_like_path(value):
                return _error(404, NOT_FOUND)
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return _error(400, "malformed Content-Length header")
            if int(length) > state.settings.max_upload_bytes + FORM_OVERHEAD:
                return _error(413, too_large_message(state.settings.max_upload_bytes))
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
        return _error(
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


# --------------------------------------------------------------------------------------------- app
def build_app(index: Index | Path, settings: ServerSettings) -> FastAPI:
    """The app for one index; see :func:`lookalike.server.create_app`."""
    state = ServerState(index, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await state.open()
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="lookalike",
        version=__version__,
        summary="Similar-image search: find the indexed images that look like a picture.",
        description=(
            "Search an index built by `lookalike index` by uploading a picture (`POST /api/search`) or by an "
            "indexed image's id (`GET /api/search?id=…`). Images and thumbnails are served by id only. Errors "
            'are one line of JSON, `{"error": "..."}`. When the server was started with `--token`, every '
            "route but `/health` needs `Authorization: Bearer <token>`."
        ),
        lifespan=lifespan,
        docs_url=None if _swagger_assets() is not None else "/docs",
    )
    app.state.lookalike = state
    _offline_docs(app)
    state.app = app
    app.add_middleware(Gate, state=state)

    # -------------------------------------------------------------------------- error handlers
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: NOT_FOUND, 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for err in errors:
            value = err.get("input")
            if isinstance(value, str) and _looks_like_path(value):
                return _error(404, NOT_FOUND)
        err = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or "request"
        msg = str(err.get("msg", "invalid value"))
        if field == "image" and err.get("type") == "missing":
            msg = "missing: send the picture as the multipart file field 'image'"
        elif err.get("type") == "missing":
            msg = "missing"
        return _error(400, f"{field}: {msg}")

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(LookalikeError)
    async def lookalike_error(request: Request, exc: LookalikeError) -> JSONResponse:
        return _error(400, str(exc))

    # ------------------------------------------------------------------------------------ page
    def static_response(request: Request, name: str) -> Response:
        data, etag = state.static[name]
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if name == "index.html":
            headers["Content-Security-Policy"] = PAGE_CSP
            headers["X-Frame-Options"] = "DENY"
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=STATIC_FILES[name], headers=headers)

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> Response:
        return static_response(request, "index.html")

    @app.get("/static/app.js", include_in_schema=False)
    async def page_script(request: Request) -> Response:
        return static_response(request, "app.js")

    @app.get("/static/style.css", include_in_schema=False)
    async def page_style(request: Request) -> Response:
        return static_response(request, "style.css")

    # ---------------------------------------------------------------------------------- search
    def check_metric(metric: str) -> str:
        if _looks_like_path(metric):
            raise HTTPException(404, NOT_FOUND)
        if metric not in METRICS:
            raise HTTPException(400, f"metric must be cosine or euclidean, got {metric[:40]!r}")
        return metric

    @app.post("/api/search", response_model=SearchOut, responses=UPLOAD_ERRORS, tags=["search"])
    async def search_by_upload(
        image: Annotated[
            UploadFile,
            File(description="The picture: JPEG, PNG, WebP, GIF, BMP or TIFF, up to the server's size limit."),
        ],
        k: Annotated[int | None, Form(description="How many results (clamped to 1..max_k, with a notice).")] = None,
        metric: Annotated[str, Form(description="cosine (similarity) or euclidean (distance).")] = "cosine",
    ) -> Response:
        """Find the indexed images most like an uploaded picture.

        The picture is decoded and prepared exactly as the model's training images were. Errors: 413 over
        the size limit, 415 not an image or an unsupported type, 400 truncated, corrupt or a decompression
        bomb.
        """
        metric = check_metric(metric)
        k_used, notice = state.clamp_k(k)
        limit = settings.max_upload_bytes
        data = await image.read(limit + 1)
        await image.close()
        if len(data) > limit:
            raise UploadError(413, too_large_message(limit))
        assert state.index is not None and state.engine is not None
        prep = state.index.model.preprocessing
        if len(data) <= INLINE_DECODE_BYTES:  # a small picture decodes in well under a millisecond
            decoded = decode_upload(data, prep, max_pixels=settings.max_pixels)
        else:
            decoded = await run_in_threadpool(decode_upload, data, prep, max_pixels=settings.max_pixels)
        t0 = time.perf_counter()
        hits = await state.engine.search(decoded.image, k_used, metric=metric)
        took = (time.perf_counter() - t0) * 1000
        state.metrics.count_search("upload")
        query = {"kind": "upload", "id": None, "path": None, "label": None, "thumbnail": None,
                 "format": decoded.format, "width": decoded.width, "height": decoded.height,
                 "bytes": decoded.size_bytes}  # fmt: skip
        return state.search_response(query, k_used, metric, notice, took, hits)

    @app.get("/api/search", response_model=SearchOut, responses=ERRORS, tags=["search"])
    async def search_by_id(
        image_id: Annotated[int, Query(alias="id", description="The id of an indexed image.")],
        k: Annotated[int | None, Query(description="How many results (clamped to 1..max_k, with a notice).")] = None,
        metric: Annotated[str, Query(description="cosine (similarity) or euclidean (distance).")] = "cosine",
        exclude_self: Annotated[bool, Query(description="Leave the query's own image out of the results.")] = False,
    ) -> Response:
        """Find the indexed images most like an indexed image (its stored vector; nothing is decoded)."""
        metric = check_metric(metric)
        assert state.index is not None and state.engine is not None
        if image_id not in state.index.entries:
            raise HTTPException(404, NOT_FOUND)
        k_used, notice = state.clamp_k(k)
        t0 = time.perf_counter()
        hits = await state.engine.search(int(image_id), k_used, metric=metric, exclude_self=exclude_self)
        took = (time.perf_counter() - t0) * 1000
        state.metrics.count_search("id")
        query = {"kind": "id", **state.image_out(image_id)}
        query.pop("image", None)
        query.update(format=None, width=None, height=None, bytes=None)
        return state.search_response(query, k_used, metric, notice, took, hits)

    # ---------------------------------------------------------------------------------- browse
    @app.get("/api/images", response_model=PageOut, responses=ERRORS, tags=["collection"])
    async def list_images(
        page: Annotated[int, Query(description="1-based page number.")] = 1,
        per_page: Annotated[int | None, Query(description="Images per page (at most max_page_size).")] = None,
    ) -> dict[str, Any]:
        """A page of the collection, in id order, with thumbnail URLs."""
        per = settings.page_size if per_page is None else max(1, min(per_page, settings.max_page_size))
        total = len(state.ids)
        pages = max(1, math.ceil(total / per))
        notice = None
        if page < 1 or page > pages:
            notice = f"page {page} is out of range; showing page {min(max(page, 1), pages)} of {pages}"
            page = min(max(page, 1), pages)
        chosen = state.ids[(page - 1) * per : page * per]
        return {"page": page, "pages": pages, "per_page": per, "total": total, "notice": notice,
                "images": [state.image_out(i) for i in chosen]}  # fmt: skip

    @app.get("/api/info", response_model=InfoOut, responses=ERRORS, tags=["collection"])
    async def info() -> dict[str, Any]:
        """What is being served: how many images, the feature extractor and model, when it was indexed."""
        assert state.index is not None
        index = state.index
        m = index.manifest
        model = m.get("model", {})
        prep = model.get("preprocessing", {}) or {}
        size, channels = prep.get("image_size"), prep.get("channels")
        arch = model.get("architecture") or index.model.architecture
        mode = "RGB" if channels == 3 else "greyscale"
        extractor = f"{arch} encoder: {size}x{size} {mode} input -> {model.get('embedding_dim')}-d embedding"
        return {
            "images": len(index),
            "labels": state.label_count,
            "folder": Path(str(m.get("root", index.root))).name,
            "extractor": extractor,
            "model": {
                "preset": model.get("preset"),
                "architecture": arch,
                "fingerprint": str(model.get("fingerprint", ""))[:12],
                "embedding_dim": model.get("embedding_dim"),
                "image_size": size,
                "channels": channels,
                "precision": m.get("precision"),
            },
            "indexed_at": m.get("created"),
            "skipped": len(m.get("skipped", [])),
            "index_version": m.get("lookalike_version"),
            "server_version": __version__,
            "metrics": list(METRICS),
            "default_k": min(settings.default_k, settings.max_k, len(index)),
            "max_k": min(settings.max_k, len(index)),
            "max_upload_bytes": settings.max_upload_bytes,
            "page_size": settings.page_size,
            "token_required": settings.token is not None,
        }

    # ------------------------------------------------------------------------------ image files
    def entry_id(text: str) -> int:
        id_ = _parse_id(text)
        if id_ is None or state.index is None or id_ not in state.index.entries:
            raise HTTPException(404, NOT_FOUND)
        return id_

    @app.get(
        "/api/images/{image_id}",
        responses={200: {"content": {"image/*": {}}, "description": "The original file."}, 404: ERRORS[404]},
        response_class=FileResponse,
        tags=["collection"],
    )
    def original(image_id: Annotated[str, PathParam(description="The id of an indexed image.")]) -> Response:
        """The original file of an indexed image, by id (only catalogued files are ever served)."""
        id_ = entry_id(image_id)
        assert state.index is not None
        path = original_file(state.index, id_)
        if path is None:
            raise HTTPException(404, NOT_FOUND)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        cache = "private, max-age=3600" if settings.token else "public, max-age=3600"
        return FileResponse(path, media_type=media, headers={"Cache-Control": cache})

    @app.get(
        "/thumbs/{image_id}",
        responses={
            200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "A thumbnail."},
            304: {"description": "Not modified (ETag)."},
            404: ERRORS[404],
        },  # fmt: skip
        response_class=Response,
        tags=["collection"],
    )
    async def thumbnail(
        request: Request,
        image_id: Annotated[str, PathParam(description="The id of an indexed image.")],
        v: Annotated[str | None, Query(description="Cache-busting version from the API's URLs.")] = None,
    ) -> Response:
        """A small thumbnail of an indexed image (made once, then cached outside the index folder)."""
        id_ = entry_id(image_id)
        assert state.thumbs is not None
        etag = state.thumbs.etag(id_)
        scope = "private" if settings.token else "public"
        if v is not None and v == state.thumbs.version(id_):
            cache = f"{scope}, max-age=31536000, immutable"
        else:
            cache = f"{scope}, no-cache"
        headers = {"ETag": etag, "Cache-Control": cache}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        try:
            thumb = state.thumbs.cached(id_)  # a small file read: on the event loop
            if thumb is None:
                thumb = await run_in_threadpool(state.thumbs.get, id_)  # decode, shrink, write
        except ThumbnailError:
            raise HTTPException(404, NOT_FOUND) from None
        return Response(thumb.data, media_type=thumb.media_type, headers=headers)

    # ------------------------------------------------------------------------------- operations
    @app.get("/health", response_model=HealthOut, tags=["operations"])
    async def health() -> dict[str, Any]:
        """Liveness: the index is loaded. Never needs the token."""
        return {"status": "ok", "images": len(state.ids)}

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4."}},
        tags=["operations"],
    )
    async def metrics() -> Response:
        """Prometheus metrics: requests by route and status, a latency histogram, the index size."""
        gauges = {
            "lookalike_index_images": ("Images in the served index.", float(len(state.ids))),
            "lookalike_thumbnails_generated": (
                "Thumbnails made by this process (others came from the cache).",
                float(state.thumbs.generated if state.thumbs else 0),
            ),
            "lookalike_uptime_seconds": ("Seconds since the server started.", round(time.time() - state.started, 3)),
        }
        return Response(state.metrics.render(gauges), media_type=METRICS_CONTENT_TYPE)

    return app
