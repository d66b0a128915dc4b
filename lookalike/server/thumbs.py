"""Thumbnails of indexed images, generated once and cached outside the index folder.

A thumbnail is the image decoded as the index decodes it (EXIF orientation, alpha on white), from the
bytes of the file that :meth:`lookalike.search.Index.open_file` opens (only a regular file inside the
indexed folder whose size and modification time are still the catalog's), shrunk so
its longer side is at most ``size`` pixels (never enlarged), and written atomically as PNG (small images,
lossless) or JPEG into ``$LOOKALIKE_CACHE/thumbs/<index fingerprint>/`` (or a folder given by the
caller). The index fingerprint changes whenever the index is rebuilt, so a cache never serves the
thumbnails of another index. When no cache folder can be written, a temporary one is used; when a file
cannot be written at all, the bytes are served from memory.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from .._fs import atomic_write_bytes
from ..decoding import decode_bytes
from ..errors import ImageDecodeError, LookalikeError

if TYPE_CHECKING:  # pragma: no cover
    from ..search import Index

logger = logging.getLogger(__name__)

THUMB_FORMAT_VERSION = 1  # bump when the way thumbnails are made changes (part of the ETag)
SMALL_SIDE = 64  # thumbnails this small or smaller are PNG, larger ones JPEG
JPEG_QUALITY = 85


@dataclass(frozen=True)
class Thumbnail:
    """A ready thumbnail."""

    data: bytes
    media_type: str
    etag: str  # quoted, as it goes in the ETag header


class ThumbnailError(Exception):
    """The indexed file is missing or cannot be decoded any more (the message names no path)."""


def index_fingerprint(index: Index) -> str:
    """A short hex id of this build of the index: its manifest (creation time, count, model) and folder."""
    h = hashlib.sha256()
    manifest_file = index.directory / "manifest.json" if index.directory is not None else None
    if manifest_file is not None and manifest_file.is_file():
        h.update(manifest_file.read_bytes())
    else:
        h.update(repr(sorted(index.manifest.items(), key=lambda kv: kv[0])).encode())
    h.update(str(index.root).encode())
    return h.hexdigest()[:16]


def default_cache_root() -> Path:
    """``$LOOKALIKE_CACHE/thumbs`` (``~/.cache/lookalike/thumbs`` by default)."""
    from ..datasets import default_cache_dir

    return default_cache_dir() / "thumbs"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def choose_cache_dir(index: Index, requested: Path | None) -> Path:
    """A writable thumbnail folder for ``index`` that is never inside the index folder."""
    candidates = []
    if requested is not None:
        candidates.append(Path(requested).expanduser())
    else:
        candidates.append(default_cache_root() / index_fingerprint(index))
    for folder in candidates:
        if index.directory is not None and _inside(folder, index.directory):
            logger.warning("%s is inside the index folder; thumbnails go to a temporary folder instead", folder)
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-", delete=True)  # noqa: SIM115
            probe.close()
            return folder
        except OSError as exc:
            logger.warning("cannot write thumbnails into %s (%s); using a temporary folder", folder, exc)
    return Path(tempfile.mkdtemp(prefix="lookalike-thumbs-"))


class ThumbnailCache:
    """Thumbnails of the images of one index, by id."""

    def __init__(self, index: Index, size: int, directory: Path | None = None) -> None:
        self.index = index
        self.size = size
        self.directory = choose_cache_dir(index, directory)
        self._locks = [threading.Lock() for _ in range(64)]  # one thumbnail of an id is made at a time
        self.generated = 0  # thumbnails made by this process (for /metrics)
        self.unwritable = False

    def etag(self, id_: int) -> str:
        """The ETag of an id's thumbnail: the file's content hash from the catalog, the size, the format."""
        digest = self.index.entries[id_].sha256[:20]
        return f'"{digest}-{self.size}-{THUMB_FORMAT_VERSION}"'

    def version(self, id_: int) -> str:
        """A short token for thumbnail URLs (``?v=``), so browsers may keep them for long."""
        return self.index.entries[id_].sha256[:12]

    def _stem(self, id_: int) -> str:
        return f"{id_}-{self.index.entries[id_].sha256[:20]}-{self.size}-v{THUMB_FORMAT_VERSION}"

    def cached(self, id_: int) -> Thumbnail | None:
        """The thumbnail of an id when it is already in the cache folder, else None (never makes one)."""
        stem = self._stem(id_)
        for ext, media in self._order(id_):
            try:
                return Thumbnail((self.directory / (stem + ext)).read_bytes(), media, self.etag(id_))
            except OSError:
                continue
        return None

    def _order(self, id_: int) -> tuple[tuple[str, str], ...]:
        """The cache file names to try, the likelier first (small files become PNG)."""
        png, jpg = (".png", "image/png"), (".jpg", "image/jpeg")
        return (jpg, png) if self.index.entries[id_].size > 8 * 1024 else (png, jpg)

    def get(self, id_: int) -> Thumbnail:
        """The thumbnail of an indexed id (which the caller has checked exists), made if needed.

        Raises:
            ThumbnailError: the image file is gone or unreadable.
        """
        found = self.cached(id_)
        if found is not None:
            return found
        stem = self._stem(id_)
        etag = self.etag(id_)
        with self._locks[id_ % len(self._locks)]:
            found = self.cached(id_)  # made by another thread meanwhile
            if found is not None:
                return found
            data, ext, media = self._make(id_)
            if not self.unwritable:
                try:
                    atomic_write_bytes(self.directory / (stem + ext), data)
                except LookalikeError as exc:
                    logger.warning("cannot cache thumbnails in %s (%s); serving them from memory", self.directory, exc)
                    self.unwritable = True
            self.generated += 1
            return Thumbnail(data, media, etag)

    def _make(self, id_: int) -> tuple[bytes, str, str]:
        file = self.index.open_file(id_)
        if file is None:
            raise ThumbnailError("the image file is missing or can no longer be read")
        try:
            with file:
                data = file.read()
            im = decode_bytes(data, 3, draft_size=self.size, name=f"id {id_}").image
        except OSError as exc:
            logger.warning("thumbnail of id %d: %s", id_, exc)
            raise ThumbnailError("the image file is missing or can no longer be read") from None
        except ImageDecodeError as exc:
            logger.warning("thumbnail of id %d: %s", id_, exc)
            raise ThumbnailError("the image file is missing or can no longer be read") from None
        im.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        if max(im.size) <= SMALL_SIDE:
            im.save(buf, format="PNG", optimize=False)
            return buf.getvalue(), ".png", "image/png"
        im.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        return buf.getvalue(), ".jpg", "image/jpeg"
