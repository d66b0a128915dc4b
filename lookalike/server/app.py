"""The FastAPI app: the factory (:func:`build_app`), its lifespan and its error handlers.

Routes (documented at ``/docs``, schema at ``/openapi.json``), one ``APIRouter`` per part in
:mod:`lookalike.server.routes`:

- ``GET /``: the page (``static/index.html`` + ``app.js`` + ``style.css``; no external URLs);
- ``POST /api/search``: multipart ``image`` (+ ``k``, ``metric``) -> JSON hits;
- ``GET /api/search?id=…``: search by an indexed image;
- ``GET /api/images``: the collection, a page of ids at a time; ``GET /api/info``: the index;
- ``GET /api/images/{id}`` and ``GET /thumbs/{id}``: an indexed file or its cached thumbnail, by id only;
- ``GET /health`` (never needs the token) and ``GET /metrics`` (Prometheus text); every ``GET`` answers
  ``HEAD`` too.

The pure ASGI middleware :class:`~lookalike.server.gate.Gate` sits in front of everything (metrics
timing, path screening, the token, upload admission, the body cap and deadline); the shared state is
:class:`~lookalike.server.state.ServerState`, reached by the routes through FastAPI dependencies. Every
error is one line of JSON: ``{"error": "..."}``.

This module imports FastAPI at the top; it is imported only through :func:`lookalike.server.create_app`.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..errors import LookalikeError
from ..search import Index
from .gate import Gate
from .responses import NOT_FOUND, error_response, json_text, looks_like_path
from .routes import ROUTERS
from .settings import ServerSettings
from .state import ServerState
from .uploads import UploadError

__all__ = ["build_app", "json_text"]

logger = logging.getLogger(__name__)


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


def _error_handlers(app: FastAPI) -> None:
    """Every error as one line of JSON."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: NOT_FOUND, 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for err in errors:
            value = err.get("input")
            in_image = "image" in err.get("loc", ())  # the picture's own bytes may hold anything
            if isinstance(value, str) and looks_like_path(value) and not in_image:
                return error_response(404, NOT_FOUND)
        err = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or "request"
        msg = str(err.get("msg", "invalid value"))
        if field == "image" and err.get("type") == "missing":
            msg = "missing: send the picture as the multipart file field 'image'"
        elif field == "image":  # a plain form field, not a file part
            msg = "not a file: send the picture as a multipart file part (with a filename)"
        elif err.get("type") == "missing":
            msg = "missing"
        return error_response(400, f"{field}: {msg}")

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(LookalikeError)
    async def lookalike_error(request: Request, exc: LookalikeError) -> JSONResponse:
        return error_response(400, str(exc))


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
    state.app = app
    _offline_docs(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(Gate, state=state)
    _error_handlers(app)
    return app
