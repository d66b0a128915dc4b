"""``POST /api/search`` (by an uploaded picture) and ``GET /api/search?id=…`` (by an indexed image)."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import Response

from ..._memory import release_free_memory
from ..admission import busy_response
from ..responses import NOT_FOUND, looks_like_path
from ..schemas import ERRORS, UPLOAD_ERRORS, SearchOut
from ..settings import METRICS
from ..state import Served, ServerState, get_served, get_state
from ..uploads import UploadError, decode_cost, decode_upload, too_large_message

INLINE_DECODE_BYTES = 256 * 1024  # uploads at most this large ...
INLINE_DECODE_COST = 1024 * 1024  # ... that decode into at most this much memory are decoded on the event loop

router = APIRouter(tags=["search"])
State = Annotated[ServerState, Depends(get_state)]
Current = Annotated[Served, Depends(get_served)]


def check_metric(metric: str) -> str:
    if looks_like_path(metric):
        raise HTTPException(404, NOT_FOUND)
    if metric not in METRICS:
        raise HTTPException(400, f"metric must be cosine or euclidean, got {metric[:40]!r}")
    return metric


@router.post("/api/search", response_model=SearchOut, responses=UPLOAD_ERRORS)
async def search_by_upload(
    state: State,
    served: Current,
    image: Annotated[
        UploadFile,
        File(
            description="The picture: JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF (HEIC with pillow-heif), up to "
            "the size limit."
        ),
    ],
    k: Annotated[int | None, Form(description="How many results (clamped to 1..max_k, with a notice).")] = None,
    metric: Annotated[str, Form(description="cosine (similarity) or euclidean (distance).")] = "cosine",
) -> Response:
    """Find the indexed images most like an uploaded picture.

    The picture is decoded and prepared exactly as the model's training images were. Errors: 413 over
    the size limit, 415 not an image or an unsupported type, 400 truncated, corrupt or a decompression
    bomb, 503 (with ``Retry-After``) when the server is already decoding as many uploads as it may.
    """
    settings = state.settings
    metric = check_metric(metric)
    k_used, notice = state.clamp_k(k, served)
    limit = settings.max_upload_bytes
    data = await image.read(limit + 1)
    await image.close()
    if len(data) > limit:
        raise UploadError(413, too_large_message(limit))
    assert state.engine is not None and state.decodes is not None
    prep = served.index.model.preprocessing
    cost = decode_cost(data, draft_size=prep.image_size)  # from the header only
    charged = await state.decodes.acquire(cost, wait=settings.admission_wait)
    if charged is None:
        return busy_response(settings.admission_wait)  # type: ignore[return-value]
    if cost <= INLINE_DECODE_COST and len(data) <= INLINE_DECODE_BYTES:  # well under a millisecond
        try:
            decoded = decode_upload(data, prep, max_pixels=settings.max_pixels)
        finally:
            state.decodes.release(charged)
    else:
        # in a thread; the slot is given back when the decode ends, even if this request is cancelled first
        job = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(_decode_large, data, prep, max_pixels=settings.max_pixels, cost=cost)
        )
        job.add_done_callback(lambda _: state.decodes.release(charged))  # type: ignore[union-attr]
        decoded = await asyncio.shield(job)
    del data
    t0 = time.perf_counter()
    hits = await state.engine.search(decoded.image, k_used, metric=metric, index=served.index)
    took = (time.perf_counter() - t0) * 1000
    state.metrics.count_search("upload")
    query = {"kind": "upload", "id": None, "path": None, "label": None, "thumbnail": None,
             "format": decoded.format, "width": decoded.width, "height": decoded.height,
             "bytes": decoded.size_bytes}  # fmt: skip
    return state.search_response(query, k_used, metric, notice, took, hits, served)


@router.get("/api/search", response_model=SearchOut, responses=ERRORS)
async def search_by_id(
    state: State,
    served: Current,
    image_id: Annotated[int, Query(alias="id", description="The id of an indexed image.")],
    k: Annotated[int | None, Query(description="How many results (clamped to 1..max_k, with a notice).")] = None,
    metric: Annotated[str, Query(description="cosine (similarity) or euclidean (distance).")] = "cosine",
    exclude_self: Annotated[bool, Query(description="Leave the query's own image out of the results.")] = False,
) -> Response:
    """Find the indexed images most like an indexed image (its stored vector; nothing is decoded)."""
    metric = check_metric(metric)
    assert state.engine is not None
    if image_id not in served.index.entries:
        raise HTTPException(404, NOT_FOUND)
    k_used, notice = state.clamp_k(k, served)
    t0 = time.perf_counter()
    hits = await state.engine.search(
        int(image_id), k_used, metric=metric, exclude_self=exclude_self, index=served.index
    )
    took = (time.perf_counter() - t0) * 1000
    state.metrics.count_search("id")
    query = {"kind": "id", **state.image_out(image_id, served)}
    query.pop("image", None)
    query.update(format=None, width=None, height=None, bytes=None)
    return state.search_response(query, k_used, metric, notice, took, hits, served)


TRIM_AFTER_COST = 64 * 1024 * 1024  # a decode this large gives its freed memory back to the system at once


def _decode_large(data: bytes, prep: Any, *, max_pixels: int, cost: int) -> Any:
    """:func:`decode_upload` in a worker thread; after a large decode, the heap's free pages are returned."""
    try:
        return decode_upload(data, prep, max_pixels=max_pixels)
    finally:
        if cost >= TRIM_AFTER_COST:
            release_free_memory()
