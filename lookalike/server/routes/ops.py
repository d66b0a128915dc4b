"""Operations: ``/health`` (never needs the token; ``HEAD`` works too, see :mod:`lookalike.server.gate`) and
``/metrics`` (Prometheus text)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from ..schemas import HealthOut
from ..state import Served, ServerState, get_served, get_state
from ..telemetry import CONTENT_TYPE as METRICS_CONTENT_TYPE

router = APIRouter(tags=["operations"])
State = Annotated[ServerState, Depends(get_state)]
Current = Annotated[Served, Depends(get_served)]


@router.get("/health", response_model=HealthOut)
async def health(served: Current) -> dict[str, Any]:
    """Liveness: the index is loaded. Never needs the token, never waits for uploads."""
    return {"status": "ok", "images": len(served.index)}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4."}},
)
async def metrics(state: State, served: Current) -> Response:
    """Prometheus metrics: requests by route and status, a latency histogram, the index size."""
    uploads, decodes = state.uploads, state.decodes
    gauges = {
        "lookalike_index_images": ("Images in the served index.", float(len(served.index))),
        "lookalike_index_loaded_timestamp_seconds": (
            "When the served index was loaded (Unix time); it is reloaded when its folder changes.",
            round(served.loaded_at, 3),
        ),
        "lookalike_index_reloads": ("Reloads of a changed index folder by this process.", float(state.reloads)),
        "lookalike_thumbnails_generated": (
            "Thumbnails made by this process (others came from the cache).",
            float(state.thumbs_generated),
        ),
        "lookalike_uploads_active": ("Uploads being received or decoded now.", float(uploads.active if uploads else 0)),
        "lookalike_uploads_refused": (
            "Uploads refused with 503 because too many were received or decoded at once.",
            float((uploads.refused if uploads else 0) + (decodes.refused if decodes else 0)),
        ),
        "lookalike_uptime_seconds": ("Seconds since the server started.", round(time.time() - state.started, 3)),
    }
    return Response(state.metrics.render(gauges), media_type=METRICS_CONTENT_TYPE)
