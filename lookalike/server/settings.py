"""The server's limits and options, one dataclass with a comment on every field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..decoding import MAX_PIXELS
from ..errors import LookalikeError

METRICS = ("cosine", "euclidean")


@dataclass(frozen=True)
class ServerSettings:
    """How the web server behaves. Every field has a safe default."""

    token: str | None = None  # when set, every route but /health needs "Authorization: Bearer <token>"
    max_upload_bytes: int = 16 * 1024 * 1024  # larger uploads are refused with 413 before decoding
    max_pixels: int = MAX_PIXELS  # most pixels an upload may decode at (the limit indexing uses too); more: 400
    max_k: int = 100  # results per query are clamped to this (and to the index size), with a notice
    default_k: int = 12  # results when the request gives no k
    thumb_size: int = 160  # longer side of a thumbnail, in pixels (smaller images are not enlarged)
    page_size: int = 48  # thumbnails per page of the browse view, by default
    max_page_size: int = 200  # the most a client may ask for per page
    max_batch: int = 32  # queries waiting together are searched in one call of at most this many
    cache_dir: Path | None = None  # thumbnail cache; default $LOOKALIKE_CACHE/thumbs/<index fingerprint>/
    warm_up: bool = True  # run a search at start-up so the first request is not slowed by one-time set-up
    # hostile or merely slow clients (issue 13)
    max_uploads: int = 4  # uploads received or decoded at once; more wait up to admission_wait, then get 503
    max_decodes: int = 2  # uploads decoded at once (each in a worker thread, never on the event loop when big)
    decode_memory_bytes: int = 384 * 1024 * 1024  # estimated peak memory of the decodes running at once
    admission_wait: float = 2.0  # seconds an upload may wait for a slot before it is refused (503 + Retry-After)
    header_timeout: float = 10.0  # seconds for a request head to arrive (from the connection or the last response)
    body_timeout: float = 60.0  # seconds for a request body to arrive in full (408, then the connection closes)
    keep_alive_timeout: int = 5  # seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive)
    reload_interval: float = 2.0  # seconds between checks whether the index folder changed (0: never reload)

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise LookalikeError("--token must not be empty")
        if self.max_upload_bytes < 1024:
            raise LookalikeError(f"the upload limit must be at least 1 KiB, got {self.max_upload_bytes} bytes")
        if self.max_pixels < 1:
            raise LookalikeError(f"the pixel limit must be positive, got {self.max_pixels}")
        if self.max_k < 1:
            raise LookalikeError(f"--max-k must be at least 1, got {self.max_k}")
        if not self.default_k >= 1:
            raise LookalikeError(f"the default k must be at least 1, got {self.default_k}")
        if not 16 <= self.thumb_size <= 1024:
            raise LookalikeError(f"the thumbnail size must be 16 to 1024 pixels, got {self.thumb_size}")
        if not 1 <= self.page_size <= self.max_page_size:
            raise LookalikeError(f"the page size must be 1 to {self.max_page_size}, got {self.page_size}")
        if self.max_batch < 1:
            raise LookalikeError(f"the batch size must be at least 1, got {self.max_batch}")
        if self.max_uploads < 1 or self.max_decodes < 1:
            raise LookalikeError(
                f"--max-uploads and --max-decodes must be at least 1, got {self.max_uploads} and {self.max_decodes}"
            )
        if self.decode_memory_bytes < 1024 * 1024:
            raise LookalikeError(
                f"the decode memory budget must be at least 1 MiB, got {self.decode_memory_bytes} bytes"
            )
        if not 0 <= self.admission_wait <= 60:
            raise LookalikeError(f"the admission wait must be 0 to 60 seconds, got {self.admission_wait}")
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise LookalikeError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.reload_interval < 0:
            raise LookalikeError(f"--reload-interval must be 0 (off) or positive, got {self.reload_interval}")

    def replace(self, **changes: Any) -> ServerSettings:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)
