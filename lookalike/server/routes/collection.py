"""The collection: pages of ids, what is indexed, and the files and thumbnails of indexed images (by id only)."""

from __future__ import annotations

import math
import mimetypes
import os
from pathlib import Path
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..._version import __version__
from ..responses import NOT_FOUND, parse_id
from ..schemas import ERRORS, InfoOut, PageOut
from ..settings import METRICS
from ..state import Served, ServerState, get_served, get_state
from ..thumbs import ThumbnailError

router = APIRouter(tags=["collection"])
State = Annotated[ServerState, Depends(get_state)]
Current = Annotated[Served, Depends(get_served)]

CHUNK = 256 * 1024  # bytes of an original file read (in a worker thread) and sent at a time


@router.get("/api/images", response_model=PageOut, responses=ERRORS)
async def list_images(
    state: State,
    served: Current,
    page: Annotated[int, Query(description="1-based page number.")] = 1,
    per_page: Annotated[int | None, Query(description="Images per page (at most max_page_size).")] = None,
) -> dict[str, Any]:
    """A page of the collection, in id order, with thumbnail URLs."""
    settings = state.settings
    per = settings.page_size if per_page is None else max(1, min(per_page, settings.max_page_size))
    total = len(served.index)
    pages = max(1, math.ceil(total / per))
    notice = None
    if page < 1 or page > pages:
        notice = f"page {page} is out of range; showing page {min(max(page, 1), pages)} of {pages}"
        page = min(max(page, 1), pages)
    chosen = served.index.entries.ids[(page - 1) * per : page * per].tolist()
    return {"page": page, "pages": pages, "per_page": per, "total": total, "notice": notice,
            "images": [state.image_out(i, served) for i in chosen]}  # fmt: skip


@router.get("/api/info", response_model=InfoOut, responses=ERRORS)
async def info(state: State, served: Current) -> dict[str, Any]:
    """What is being served: how many images, the feature extractor and model, when it was indexed and
    when this server last loaded it."""
    settings = state.settings
    index = served.index
    m = index.manifest
    model = m.get("model", {})
    prep = model.get("preprocessing", {}) or {}
    size, channels = prep.get("image_size"), prep.get("channels")
    arch = model.get("architecture") or index.model.architecture
    mode = "RGB" if channels == 3 else "greyscale"
    extractor = f"{arch} encoder: {size}x{size} {mode} input -> {model.get('embedding_dim')}-d embedding"
    return {
        "images": len(index),
        "labels": served.label_count,
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
        "loaded_at": served.loaded_at_iso,
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


# ---------------------------------------------------------------------------------- image files
def entry_id(text: str, served: Served) -> int:
    id_ = parse_id(text)
    if id_ is None or id_ not in served.index.entries:
        raise HTTPException(404, NOT_FOUND)
    return id_


class OpenFileResponse(Response):
    """The bytes of a file that is already open (never opened again by path), read in a worker thread a
    chunk at a time; the file is closed when the response ends, however it ends."""

    def __init__(self, file: IO[bytes], size: int, media_type: str, headers: dict[str, str]) -> None:
        super().__init__(None, media_type=media_type, headers={**headers, "Content-Length": str(size)})
        self.file = file
        self.size = size

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            left = self.size
            while True:
                chunk = self.file.read(left) if left <= CHUNK // 4 else await run_in_threadpool(self.file.read, CHUNK)
                chunk = chunk[:left]
                left -= len(chunk)
                if not chunk and left > 0:
                    raise OSError("the file shrank while it was sent")  # the connection is dropped
                await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
                if left <= 0:
                    break
        finally:
            self.file.close()


@router.get(
    "/api/images/{image_id}",
    responses={200: {"content": {"image/*": {}}, "description": "The original file."}, 404: ERRORS[404]},
    response_class=Response,
)
async def original(
    state: State,
    served: Current,
    image_id: Annotated[str, PathParam(description="The id of an indexed image.")],
) -> Response:
    """The original file of an indexed image, by id. Only catalogued files are ever served, and only while
    the file is a regular file inside the indexed folder whose size and modification time are still the
    catalog's (a file swapped for a link, a pipe or other content since it was indexed: 404)."""
    id_ = entry_id(image_id, served)
    file = await run_in_threadpool(served.index.open_file, id_)
    if file is None:
        raise HTTPException(404, NOT_FOUND)
    try:
        size = os.fstat(file.fileno()).st_size
    except BaseException:
        file.close()
        raise
    media = mimetypes.guess_type(served.index.entries[id_].path)[0] or "application/octet-stream"
    cache = "private, max-age=3600" if state.settings.token else "public, max-age=3600"
    return OpenFileResponse(file, size, media, {"Cache-Control": cache})


@router.get(
    "/thumbs/{image_id}",
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "A thumbnail."},
        304: {"description": "Not modified (ETag)."},
        404: ERRORS[404],
    },  # fmt: skip
    response_class=Response,
)
async def thumbnail(
    request: Request,
    state: State,
    served: Current,
    image_id: Annotated[str, PathParam(description="The id of an indexed image.")],
    v: Annotated[str | None, Query(description="Cache-busting version from the API's URLs.")] = None,
) -> Response:
    """A small thumbnail of an indexed image (made once, then cached outside the index folder)."""
    id_ = entry_id(image_id, served)
    thumbs = served.thumbs
    etag = thumbs.etag(id_)
    scope = "private" if state.settings.token else "public"
    if v is not None and v == thumbs.version(id_):
        cache = f"{scope}, max-age=31536000, immutable"
    else:
        cache = f"{scope}, no-cache"
    headers = {"ETag": etag, "Cache-Control": cache}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    try:
        thumb = thumbs.cached(id_)  # a small file read: on the event loop
        if thumb is None:
            thumb = await run_in_threadpool(thumbs.get, id_)  # read the original, decode, shrink, write
    except ThumbnailError:
        raise HTTPException(404, NOT_FOUND) from None
    return Response(thumb.data, media_type=thumb.media_type, headers=headers)
