"""What an image is, for every part of lookalike: which files are opened, which formats and sizes are
decoded, and how pixels come out (one policy for indexing, training, queries and the server's uploads).

Files. Only regular files are opened: a FIFO, socket or device (also behind a symbolic link) is refused
from its ``stat`` before any ``open``, and checked again on the open descriptor (``O_NONBLOCK``, so even a
FIFO swapped in between never blocks). At most :data:`MAX_FILE_BYTES` are read; a larger file (a sparse
4 GiB file, say) is refused from its size, and one that grows past the limit while being read is refused
too.

Images. The bytes decide the format, not the file name: :data:`FORMATS` are decoded (JPEG, PNG and APNG,
WebP, GIF, BMP, TIFF, AVIF; HEIC/HEIF when ``pillow-heif`` is installed), anything else Pillow might
recognise (ICO, TGA, JPEG 2000, PDF, ...) is refused as unsupported. An image is refused before its pixels
are decoded when decoding it would take more than ``max_pixels`` pixels (:data:`MAX_PIXELS` by default;
a JPEG counts the pixels it is decoded at, which its DCT scaling makes up to 64 times fewer than its
size, so a 100-megapixel camera JPEG decodes in a few megapixels of memory). A PNG's checksums are
verified. Then: the first frame of an animation or a multi-page file; a shrink by an integer factor (box
filter) to about twice the size the model needs, before anything else touches the pixels; the embedded
ICC profile converted to sRGB; the EXIF orientation applied; any mode (palette, 16-bit, 32-bit integer,
float with NaNs, CMYK, LAB, YCbCr, 1-bit, alpha onto white) mapped to 8-bit RGB or L.

Every refusal is an :class:`~lookalike.errors.ImageDecodeError` naming the file, with a one-line reason
and a :attr:`~lookalike.errors.ImageDecodeError.kind` (``unreadable``, ``not-image``, ``unsupported``,
``too-large``, ``corrupt``) that the server maps to an HTTP status. Pillow's own warnings
(decompression-bomb warnings, which this limit replaces, and "Corrupt EXIF data") are kept off the
terminal; a corrupt EXIF block is ignored (no orientation).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import logging
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error  # Pillow raises it on some malformed headers
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from .errors import ImageDecodeError, display_path

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 256 * 1024 * 1024  # larger files are refused unread (a documented limit)
MAX_PIXELS = 64_000_000  # the most pixels one image may be decoded at (JPEGs: at their DCT-scaled size)

# Pillow format name -> how to say it. The bytes decide; the file name is only a first filter.
FORMATS: dict[str, str] = {
    "JPEG": "JPEG",
    "MPO": "JPEG",  # multi-picture JPEG from phone cameras
    "PNG": "PNG",
    "WEBP": "WebP",
    "GIF": "GIF",
    "BMP": "BMP",
    "DIB": "BMP",
    "TIFF": "TIFF",
    "AVIF": "AVIF",
    "HEIF": "HEIC",  # with pillow-heif
}
# Names a folder scan considers (case-insensitive); HEIC/HEIF files are reported when pillow-heif is missing.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif"}
)
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}  # ISO-BMFF 'ftyp' brands
_SHRINK_GAP = 2  # shrink by whole factors while the image stays at least this many times the model's size


def accepted_formats_text() -> str:
    """The accepted formats, for messages: 'JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF' (+ HEIC when installed)."""
    names = ["JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF", "AVIF"] + (["HEIC"] if heif_available() else [])
    return ", ".join(names[:-1]) + " or " + names[-1]


@functools.cache
def heif_available() -> bool:
    """Whether HEIC/HEIF files can be decoded: ``pillow-heif`` is installed (its opener is registered once)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


# ------------------------------------------------------------------------------------------- files
def file_kind(mode: int) -> str:
    """'FIFO', 'socket', 'character device', ... for a ``stat`` mode that is not a regular file."""
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; 268435456 -> '256 MiB'."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} bytes"


def os_problem(exc: OSError) -> str:
    """A file system refusal as a short reason: 'permission denied', 'symbolic link loop', ..."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOENT:
        return "file not found"
    return f"cannot read ({exc.strerror or exc})"


def check_regular(st: os.stat_result, path: object, max_bytes: int = MAX_FILE_BYTES) -> None:
    """Refuse a ``stat`` result that is not a regular, non-empty file of at most ``max_bytes``.

    Raises:
        ImageDecodeError: with kind ``unreadable`` (not a regular file, empty) or ``too-large``.
    """
    if stat.S_ISDIR(st.st_mode):
        raise ImageDecodeError(path, "is a folder, not an image file", kind="unreadable")
    if not stat.S_ISREG(st.st_mode):
        raise ImageDecodeError(path, f"not a regular file ({file_kind(st.st_mode)})", kind="unreadable")
    if st.st_size == 0:
        raise ImageDecodeError(path, "empty file", kind="not-image")
    if st.st_size > max_bytes:
        raise ImageDecodeError(
            path, f"{human_bytes(st.st_size)}: larger than the {human_bytes(max_bytes)} limit", kind="too-large"
        )


def open_regular(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> BinaryIO:
    """Open a regular file for reading, never blocking, and never a FIFO, socket or device.

    The file's ``stat`` is checked before opening (opening some devices has effects) and the open
    descriptor's ``fstat`` again (the path may have been swapped in between).

    Raises:
        ImageDecodeError: the file is missing, unreadable, not a regular file, empty or over ``max_bytes``.
    """
    try:
        check_regular(os.stat(path), path, max_bytes)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ImageDecodeError(path, os_problem(exc), kind="unreadable") from None
    try:
        check_regular(os.fstat(fd), path, max_bytes)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_limited(fh: BinaryIO, path: object, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read an open file whole, refusing it once it passes ``max_bytes`` (it grew while being read)."""
    try:
        data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ImageDecodeError(path, os_problem(exc), kind="unreadable") from None
    if len(data) > max_bytes:
        raise ImageDecodeError(path, f"grew past the {human_bytes(max_bytes)} limit while being read", kind="too-large")
    return data


def read_file(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular`)."""
    with open_regular(path, max_bytes) as fh:
        return read_limited(fh, path, max_bytes)


def sha256_file(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> str:
    """Hex sha256 of a regular file's bytes, read in 1 MiB blocks (refused as :func:`open_regular` says)."""
    h = hashlib.sha256()
    read = 0
    with open_regular(path, max_bytes) as fh:
        try:
            while block := fh.read(1 << 20):
                read += len(block)
                if read > max_bytes:
                    raise ImageDecodeError(path, f"grew past the {human_bytes(max_bytes)} limit", kind="too-large")
                h.update(block)
        except OSError as exc:
            raise ImageDecodeError(path, os_problem(exc), kind="unreadable") from None
    return h.hexdigest()


def is_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether ``path``, with every symbolic link resolved, is ``root`` (resolved) or under it."""
    real = os.path.realpath(path)
    base = os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def link_problem(path: str | os.PathLike[str], root: str | os.PathLike[str], *, follow_outside: bool) -> str | None:
    """Why a file found under ``root`` must be skipped because of symbolic links, or None.

    A link that is broken or loops is always skipped; one whose target is outside ``root`` is skipped
    unless ``follow_outside``. Paths that are no links (and links inside ``root``) give None.
    """
    try:
        lst = os.lstat(path)
    except OSError as exc:
        return os_problem(exc)
    if not stat.S_ISLNK(lst.st_mode) and is_inside(os.path.dirname(path) or ".", root):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if exc.errno == errno.ENOENT:
            return "broken symbolic link (its target does not exist)"
        return os_problem(exc)
    if not follow_outside and not is_inside(path, root):
        return "symbolic link to a file outside the folder (index with --follow-symlinks to include it)"
    return None


def open_indexed_file(
    root: str | os.PathLike[str],
    relative: str,
    *,
    size: int,
    mtime_ns: int,
    follow_outside: bool = False,
    max_bytes: int = MAX_FILE_BYTES,
) -> BinaryIO | None:
    """Open the file a catalog row names, only if it is still what was indexed; else None.

    The row's path must be relative and stay under ``root`` (no ``..``, no absolute path, no backslash or
    NUL); the file must resolve inside ``root`` (unless the index was built following links outside it),
    be a regular file, and have the row's size and mtime. The returned file is checked after opening, so
    a path swapped for a link or a FIFO between the checks is refused too. The caller closes it.
    """
    parts = relative.split("/")
    if not relative or relative.startswith("/") or os.path.isabs(relative) or ".." in parts:
        return None
    if "\\" in relative or "\x00" in relative:
        return None
    path = os.path.join(os.fspath(root), *parts)
    try:  # a broken or looping link fails to open; one out of the root is refused after opening
        fh = open_regular(path, max_bytes)
    except ImageDecodeError:
        return None
    st = os.fstat(fh.fileno())
    if st.st_size != size or st.st_mtime_ns != mtime_ns or (not follow_outside and not is_inside(path, root)):
        fh.close()
        return None
    return fh


# ------------------------------------------------------------------------------------------ images
@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and what its file said about itself."""

    image: Image.Image  # oriented 8-bit RGB or L, shrunk by a whole factor towards the size asked for
    format: str  # the file's real format, as people say it (FORMATS' values)
    width: int  # as stored in the file, before orientation or shrinking
    height: int


def _quiet_pillow() -> None:
    """Keep Pillow's warnings about the file being decoded off the terminal (the policy handles them).

    ``warnings.catch_warnings`` is not thread-safe, so the filters are added process-wide, for Pillow's
    own modules only: its decompression-bomb warning (:data:`MAX_PIXELS` is the limit here) and "Corrupt
    EXIF data" / "Possibly corrupt EXIF" notices. They are put back whenever they are gone (a caller's
    ``catch_warnings`` block restores the filters it found when it ends).
    """
    if not _filters_installed():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


def _filters_installed() -> bool:
    found = 0
    for action, _message, category, module, _line in warnings.filters:
        if action == "ignore" and (
            category is Image.DecompressionBombWarning
            or (category is UserWarning and module is not None and module.pattern == r"PIL\.")
        ):
            found += 1
    return found >= 2


def _decoded_size(im: Image.Image, draft_size: int | None) -> tuple[int, int]:
    """The size a file's pixels are decoded at: a JPEG's DCT scaling (``draft``) divides it by up to 8."""
    w, h = im.size
    if draft_size and im.format in ("JPEG", "MPO"):
        scale = 1
        while scale < 8 and min(w, h) // (scale * 2) >= draft_size:
            scale *= 2
        return -(-w // scale), -(-h // scale)
    return w, h


def decode_cost(data: bytes, draft_size: int | None = None) -> int:
    """Estimated peak bytes of decoding ``data`` (the decoded pixels, at 4 bytes each, plus a shrunk copy);
    0 when the header cannot be read. Cheap: reads the header only."""
    _quiet_pillow()
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = _decoded_size(im, draft_size)
            bands = max(len(im.getbands()), 1)
    except Exception:  # noqa: BLE001 - whatever the header does, it has no cost to report
        return 0
    bytes_per = 4 if bands >= 3 or im.mode in ("I", "F", "I;16") else bands
    return int(w * h * bytes_per * 1.5)


def decode_bytes(
    data: bytes,
    channels: int = 3,
    *,
    draft_size: int | None = None,
    name: object = "<bytes>",
    max_pixels: int = MAX_PIXELS,
) -> DecodedImage:
    """Decode an image file's bytes as lookalike decodes every image (see the module's docstring).

    Args:
        data: the file's bytes.
        channels: 3 for RGB, 1 for greyscale.
        draft_size: the size the image will be resized to: a JPEG is decoded at the smallest DCT scale
            that is still at least this big, any image is shrunk by a whole factor while it stays at
            least twice this big. None decodes at full size.
        name: the file, for messages.
        max_pixels: the most pixels the image may be decoded at.

    Raises:
        ImageDecodeError: empty, not an image, an unsupported format, too many pixels, truncated or corrupt.
    """
    if not data:
        raise ImageDecodeError(name, "empty file", kind="not-image")
    fmt = "?"
    _quiet_pillow()
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "?"
            _check_format(fmt, name)
            w, h = im.size
            dw, dh = _decoded_size(im, draft_size)
            if dw * dh > max_pixels or w * h > 64 * max_pixels:  # DCT scaling divides by 64 at most
                raise ImageDecodeError(
                    name,
                    f"refused: {w}x{h} = {w * h:,} pixels (decoded at {dw}x{dh}; the limit is {max_pixels:,} "
                    "pixels to decode)",
                    kind="too-large",
                )
            if fmt == "PNG":
                im.verify()  # chunk checksums, without decoding the pixels
        with Image.open(io.BytesIO(data)) as im:
            if draft_size and fmt in ("JPEG", "MPO"):
                im.draft("RGB" if channels == 3 else "L", (draft_size, draft_size))
            im.load()
            icc = im.info.get("icc_profile")
            exif_orientation = _orientation(im)
            out = _shrink(im, draft_size)
            if icc:
                out = _to_srgb(out, icc, name)
            out = _orient(out, exif_orientation)
            out = to_mode(out, channels)
            return DecodedImage(out, FORMATS[fmt], w, h)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        sniffed = _sniff(data)
        if sniffed is not None:  # the signature of a format we read, then a header Pillow cannot parse
            raise ImageDecodeError(name, f"truncated or corrupt {sniffed} file (its header is damaged)") from None
        if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS and not heif_available():
            raise ImageDecodeError(
                name,
                'HEIC/HEIF image: reading it needs pillow-heif (pip install "lookalike[heif]")',
                kind="unsupported",
            ) from None
        raise ImageDecodeError(name, "not an image file lookalike can read", kind="not-image") from None
    except Image.DecompressionBombError:
        cap = min(2 * int(Image.MAX_IMAGE_PIXELS or 0), max_pixels)  # Pillow's own check came first
        raise ImageDecodeError(name, f"refused: more than {cap:,} pixels to decode", kind="too-large") from None
    except MemoryError:
        raise ImageDecodeError(name, "not enough memory to decode it", kind="too-large") from None
    except RuntimeError as exc:  # the AVIF and HEIF plugins' decoders
        kind = "too-large" if "limit" in str(exc).lower() else "corrupt"
        what = FORMATS.get(fmt) or _sniff(data) or "image"
        raise ImageDecodeError(name, f"truncated or corrupt {what} file ({_one_line(exc)})", kind=kind) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct_error) as exc:
        what = FORMATS.get(fmt) or _sniff(data) or "image"
        raise ImageDecodeError(name, f"truncated or corrupt {what} file ({_one_line(exc)})", kind="corrupt") from None


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))  # fmt: skip


def _sniff(data: bytes) -> str | None:
    """The accepted format whose signature ``data`` starts with, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM" and data[6:10] == b"\0\0\0\0":  # 'BM', the file size, reserved zeros
        return "BMP"
    if data[4:8] == b"ftyp":  # ISO-BMFF: the major brand says which
        if data[8:12] in (b"avif", b"avis"):
            return "AVIF"
        if data[8:12] in _HEIF_BRANDS and heif_available():
            return "HEIC"
    return next((what for sig, what in _SIGNATURES if data.startswith(sig)), None)


def _check_format(fmt: str, name: object) -> None:
    if fmt in FORMATS and (fmt != "HEIF" or heif_available()):
        return
    raise ImageDecodeError(
        name, f"unsupported image type {fmt}; lookalike reads {accepted_formats_text()}", kind="unsupported"
    )


def _one_line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:160]


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8), 1 when absent or unreadable (a corrupt EXIF block is ignored)."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - any corrupt EXIF means no orientation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


_TRANSPOSE = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


def _orient(im: Image.Image, orientation: int) -> Image.Image:
    for op in _TRANSPOSE.get(orientation, ()):
        im = im.transpose(op)
    return im


def _shrink(im: Image.Image, draft_size: int | None) -> Image.Image:
    """Shrink by a whole factor (box filter) while the image stays at least twice ``draft_size``."""
    if not draft_size:
        return im
    factor = min(im.size) // (draft_size * _SHRINK_GAP)
    if factor < 2:
        return im
    if im.mode not in ("L", "RGB", "RGBA", "LA", "CMYK", "I", "F", "RGBa", "La", "YCbCr", "LAB", "I;16"):
        im = im.convert("RGBA" if "transparency" in im.info or "A" in im.mode else "RGB")
    try:
        return im.reduce(factor)
    except ValueError:  # a mode reduce() does not take
        return im


_SRGB = None


@functools.lru_cache(maxsize=16)
def _icc_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    global _SRGB
    if _SRGB is None:
        _SRGB = ImageCms.createProfile("sRGB")
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    out_mode = "RGBA" if mode == "RGBA" else "RGB"
    return ImageCms.buildTransform(src, _SRGB, mode, out_mode, renderingIntent=ImageCms.Intent.PERCEPTUAL)


def _to_srgb(im: Image.Image, icc: bytes, name: object) -> Image.Image:
    """Convert pixels in an embedded ICC profile's colour space to sRGB (others are returned as they are)."""
    if im.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return im
    try:
        transform = _icc_transform(bytes(icc), im.mode)
        return ImageCms.applyTransform(im, transform)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        logger.debug("%s: ICC profile ignored (%s)", display_path(name), exc)
        return im


# -------------------------------------------------------------------------------------------- modes
def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Composite an image with an alpha channel onto a white background, returning RGB."""
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_8bit_grey(im: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit integer and float greyscale images to 8-bit L without clipping detail away.

    NaN and infinite values (float TIFFs) become black; the scale comes from the finite values.
    """
    arr = np.asarray(im, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, 0.0)
    if im.mode.startswith("I;16"):
        scale = 65535.0
    elif im.mode == "F":
        hi = float(arr.max()) if arr.size else 1.0
        scale = 1.0 if hi <= 1.0 else max(hi, 255.0)
    else:  # "I": 32-bit integers, commonly 16-bit data
        hi = float(arr.max()) if arr.size else 255.0
        scale = 255.0 if hi <= 255 else (65535.0 if hi <= 65535 else hi)
    arr = arr / scale * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_mode(im: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB (``channels=3``) or L (``channels=1``).

    Transparent pixels become white; palette images with a transparent colour are treated as alpha.
    """
    mode = im.mode
    if mode in ("P", "L", "RGB") and "transparency" in im.info:  # a transparent colour (PNG tRNS)
        im = _flatten_alpha(im)
    elif mode == "P":
        im = im.convert("RGB")
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = _flatten_alpha(im)
    elif mode in ("I", "F") or mode.startswith("I;16"):
        im = _to_8bit_grey(im)
    elif mode not in ("RGB", "L"):
        im = im.convert("RGB")  # 1, CMYK, YCbCr, LAB, HSV, ...
    target = "RGB" if channels == 3 else "L"
    return im if im.mode == target else im.convert(target)


def decode_file(
    path: str | os.PathLike[str],
    channels: int = 3,
    *,
    draft_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
) -> DecodedImage:
    """Read a file (regular files only, at most ``max_bytes``) and decode it."""
    return decode_bytes(read_file(path, max_bytes), channels, draft_size=draft_size, name=Path(path),
                        max_pixels=max_pixels)  # fmt: skip
