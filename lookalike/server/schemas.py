"""The JSON shapes of the API (pydantic models, for ``/docs`` and ``/openapi.json``) and the error responses
each route documents. Searches write their JSON directly (see :meth:`ServerState.search_response
<lookalike.server.state.ServerState.search_response>`) in the shape of :class:`SearchOut`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
    loaded_at: str = Field(
        description="When this server last loaded the index (ISO 8601, UTC); it reloads "
        "the index when `lookalike index` changes it."
    )
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
    408: {"model": ErrorOut, "description": "The body did not arrive within the server's deadline."},
    413: {"model": ErrorOut, "description": "The upload is larger than the limit."},
    415: {"model": ErrorOut, "description": "Not an image, or an image type the server does not accept."},
    503: {"model": ErrorOut, "description": "Too many uploads at once: retry after `Retry-After` seconds."},
}
