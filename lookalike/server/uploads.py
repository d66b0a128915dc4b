"""Checking an uploaded file before and while it is decoded (Pillow only; no web framework here).

The order matters: the size cap is applied while the body is read (see ``app.py``), then
:func:`decode_upload` identifies the format from the bytes (the declared content type is not trusted),
refuses unsupported formats, refuses images whose header promises more pixels than the limit (a
decompression bomb) before any pixel is decoded, verifies the file's structure, and only then decodes it
exactly as an indexed file is decoded (:func:`lookalike.data.decode_image`: EXIF orientation, modes,
alpha, JPEG draft at the model's input size).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..config import Preprocessing
from ..data import decode_image
from ..errors import ImageDecodeError

# Pillow format names accepted, and how to say them
ACCEPTED_FORMATS = {
    "JPEG": "JPEG",
    "MPO": "JPEG",  # multi-picture JPEG from phone cameras
    "PNG": "PNG",
    "WEBP": "WebP",
    "GIF": "GIF",
    "BMP": "BMP",
    "TIFF": "TIFF",
}
ACCEPTED_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"


class UploadError(Exception):
    """A refused upload: an HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class DecodedUpload:
    """An accepted upload, decoded as the model's training images were."""

    image: Image.Image  # oriented 8-bit RGB or L, JPEG-drafted near the model's input size
    format: str  # the file's real format (from its bytes)
    width: int  # as stored in the file, before orientation
    height: int
    size_bytes: int


def pixel_limit(max_pixels: int) -> int:
    """The effective pixel limit: the server's, and never above Pillow's own ``Image.MAX_IMAGE_PIXELS``."""
    pillow = Image.MAX_IMAGE_PIXELS
    return max_pixels if not pillow else min(max_pixels, int(pillow))


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.3g} MiB"
    if n >= 1024:
        return f"{n / 1024:.3g} KiB"
    return f"{n} bytes"


def too_large_message(limit: int) -> str:
    return f"upload too large: the limit is {human_bytes(limit)}"


def decode_upload(data: bytes, prep: Preprocessing, *, max_pixels: int) -> DecodedUpload:
    """Check and decode an uploaded image.

    Raises:
        UploadError: 400 for an empty, truncated or corrupt file or a decompression bomb; 415 for a file
            that is not an image or whose format is not accepted.
    """
    if not data:
        raise UploadError(400, "empty upload: the image field holds no bytes")
    limit = pixel_limit(max_pixels)
    fmt = "?"
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "?"
            width, height = im.size
            if fmt not in ACCEPTED_FORMATS:
                raise UploadError(415, f"unsupported image type {fmt}; send {ACCEPTED_TEXT}")
            if width * height > limit:
                raise UploadError(
                    400,
                    f"refused as a decompression bomb: {width}x{height} = {width * height:,} pixels "
                    f"(the limit is {limit:,})",
                )
            im.verify()  # structure and checksums (PNG CRCs, ...) without decoding the pixels
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(415, f"not an image: send {ACCEPTED_TEXT}") from None
    except Image.DecompressionBombError:
        raise UploadError(400, f"refused as a decompression bomb (more than {limit:,} pixels)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        what = ACCEPTED_FORMATS.get(fmt, "image")
        raise UploadError(400, f"truncated or corrupt {what} file ({_reason(exc)})") from None
    try:
        image = decode_image(data, prep.channels, draft_size=prep.image_size, name="upload")
    except ImageDecodeError as exc:
        reason = exc.reason
        if "decompression bomb" in reason:
            raise UploadError(400, "refused as a decompression bomb") from None
        raise UploadError(400, f"truncated or corrupt {ACCEPTED_FORMATS[fmt]} file ({_strip_prefix(reason)})") from None
    return DecodedUpload(image, ACCEPTED_FORMATS[fmt], width, height, len(data))


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]


def _strip_prefix(reason: str) -> str:
    reason = reason.removeprefix("cannot decode (").removesuffix(")")
    return " ".join(reason.split())[:160]
