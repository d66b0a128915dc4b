"""Checking an uploaded file before and while it is decoded (Pillow only; no web framework here).

The size cap is applied while the body is read (see the gate), then :func:`decode_upload` decodes the
bytes with the policy every image in lookalike goes through (:func:`lookalike.decoding.decode_bytes`:
the format from the bytes, not the declared content type; the accepted formats; the pixel limit checked
from the header before any pixel is decoded; PNG checksums; EXIF orientation, ICC profiles, modes,
alpha; JPEGs decoded near the model's input size), so an upload is accepted exactly when the same file
would be indexed, and its refusals map to HTTP statuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from ..config import Preprocessing
from ..decoding import MAX_PIXELS, accepted_formats_text, decode_bytes, decode_cost, human_bytes
from ..errors import ImageDecodeError

__all__ = ["DecodedUpload", "UploadError", "decode_cost", "decode_upload", "human_bytes", "too_large_message"]

_STATUS = {"not-image": 415, "unsupported": 415, "too-large": 400, "corrupt": 400, "unreadable": 400}


class UploadError(Exception):
    """A refused upload: an HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class DecodedUpload:
    """An accepted upload, decoded as the model's training images were."""

    image: Image.Image  # oriented 8-bit RGB or L, decoded near the model's input size
    format: str  # the file's real format (from its bytes)
    width: int  # as stored in the file, before orientation
    height: int
    size_bytes: int


def too_large_message(limit: int) -> str:
    return f"upload too large: the limit is {human_bytes(limit)}"


def decode_upload(data: bytes, prep: Preprocessing, *, max_pixels: int = MAX_PIXELS) -> DecodedUpload:
    """Check and decode an uploaded image.

    Raises:
        UploadError: 400 for an empty, truncated or corrupt file or one over the pixel limit; 415 for a
            file that is not an image or whose format is not accepted.
    """
    if not data:
        raise UploadError(400, "empty upload: the image field holds no bytes")
    try:
        decoded = decode_bytes(data, prep.channels, draft_size=prep.image_size, name="upload", max_pixels=max_pixels)
    except ImageDecodeError as exc:
        reason = exc.reason
        if exc.kind == "not-image":
            reason = f"not an image: send {accepted_formats_text()}"
        raise UploadError(_STATUS.get(exc.kind, 400), reason) from None
    return DecodedUpload(decoded.image, decoded.format, decoded.width, decoded.height, len(data))
