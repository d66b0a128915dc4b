"""The server's limits and options, one dataclass with a comment on every field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LookalikeError

METRICS = ("cosine", "euclidean")


@dataclass(frozen=True)
class ServerSettings:
    """How the web server behaves. Every field has a safe default."""

    token: str | None = None  # when set, every route but /health needs "Authorization: Bearer <token>"
    max_upload_bytes: int = 16 * 1024 * 1024  # larger uploads are refused with 413 before decoding
    max_pixels: int = 40_000_000  # width x height above this is a decompression bomb (400); at most Pillow's limit
    max_k: int = 100  # results per query are clamped to this (and to the index size), with a notice
    default_k: int = 12  # results when the request gives no k
    thumb_size: int = 160  # longer side of a thumbnail, in pixels (smaller images are not enlarged)
    page_size: int = 48  # thumbnails per page of the browse view, by default
    max_page_size: int = 200  # the most a client may ask for per page
    max_batch: int = 32  # queries waiting together are searched in one call of at most this many
    cache_dir: Path | None = None  # thumbnail cache; default $LOOKALIKE_CACHE/thumbs/<index fingerprint>/
    warm_up: bool = True  # run a search at start-up so the first request is not slowed by one-time set-up

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

    def replace(self, **changes: Any) -> ServerSettings:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)
