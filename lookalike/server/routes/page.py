"""The page: ``static/index.html``, ``app.js`` and ``style.css`` (package data), served from memory with
ETags and a Content-Security-Policy that allows nothing but the server itself."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@functools.cache
def static_file(name: str) -> tuple[bytes, str]:
    """A file of the page and its ETag (read once per process)."""
    data = (resources.files("lookalike.server") / "static" / name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


def static_response(request: Request, name: str) -> Response:
    data, etag = static_file(name)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if name == "index.html":
        headers["Content-Security-Policy"] = PAGE_CSP
        headers["X-Frame-Options"] = "DENY"
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=STATIC_FILES[name], headers=headers)


@router.get("/")
async def page(request: Request) -> Response:
    return static_response(request, "index.html")


@router.get("/static/app.js")
async def page_script(request: Request) -> Response:
    return static_response(request, "app.js")


@router.get("/static/style.css")
async def page_style(request: Request) -> Response:
    return static_response(request, "style.css")
