"""Find image files, decode them robustly, and prepare them exactly as a model expects.

Decoding applies EXIF orientation, flattens alpha onto white, maps any Pillow mode (palette, 16-bit,
32-bit integer, float, CMYK, 1-bit) to RGB or L, and turns every failure into an
:class:`~lookalike.errors.ImageDecodeError` naming the file and the reason. Unreadable files are
dropped by the batch collator and reported, never crash a batch.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import Preprocessing
from .errors import ImageDecodeError, LookalikeError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name has one of the supported image extensions (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """List the image files under ``root``, recursively, sorted by path.

    Hidden files and folders (names starting with ``.``) are skipped; symbolic links to files are
    followed, links to folders are not.

    Args:
        root: the folder to search.

    Returns:
        Absolute paths of the image files, sorted.

    Raises:
        LookalikeError: the folder is missing, is not a folder, is empty, or holds no images.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise LookalikeError(f"{root}: folder does not exist")
    if not root.is_dir():
        raise LookalikeError(f"{root}: not a folder")
    root = root.resolve()
    found: list[str] = []  # plain strings while walking: Path objects cost a second per 50,000 files
    seen_any = False
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            seen_any = True
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(dirpath, name))
    if not found:
        if not seen_any:
            raise LookalikeError(f"{root}: folder is empty")
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise LookalikeError(f"{root}: no images found (looked for {exts})")
    found.sort(key=lambda p: p.split(os.sep))  # the order of sorting Path objects
    return [Path(p) for p in found]


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Composite an image with an alpha channel onto a white background, returning RGB."""
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_8bit_grey(im: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit integer and float greyscale images to 8-bit L without clipping detail away."""
    arr = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16"):
        scale = 65535.0
    elif im.mode == "F":
        hi = float(np.nanmax(arr)) if arr.size else 1.0
        scale = 1.0 if hi <= 1.0 else max(hi, 255.0)
    else:  # "I": 32-bit integers, commonly 16-bit data
        hi = float(arr.max()) if arr.size else 255.0
        scale = 255.0 if hi <= 255 else (65535.0 if hi <= 65535 else hi)
    arr = np.nan_to_num(arr / scale * 255.0)
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


def decode_image(
    source: str | os.PathLike[str] | bytes,
    channels: int = 3,
    *,
    draft_size: int | None = None,
    name: str | os.PathLike[str] | None = None,
) -> Image.Image:
    """Decode an image file (or its bytes) to an oriented 8-bit RGB or L Pillow image.

    Args:
        source: a path, or the file's bytes.
        channels: 3 for RGB, 1 for greyscale.
        draft_size: when set, JPEGs are decoded at the smallest scale that is still at least this big
            (much faster for large photos that will be shrunk anyway).
        name: the file name to put in error messages when ``source`` is bytes.

    Raises:
        ImageDecodeError: the file is missing, not an image, truncated, or too large.
    """
    label = name if name is not None else source if not isinstance(source, bytes) else "<bytes>"
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(fp) as im:
            if draft_size and im.format == "JPEG":
                im.draft("RGB" if channels == 3 else "L", (draft_size, draft_size))
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_mode(im, channels)
    except FileNotFoundError:
        raise ImageDecodeError(label, "file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(label, "is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(label, "not an image file Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(label, f"refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ImageDecodeError(label, f"cannot decode ({reason})") from None


def thumbnail(path: str | os.PathLike[str], channels: int = 3, size: int = 96) -> np.ndarray:
    """A small uint8 array (longer side ``size``) of an image file, for pictures of results."""
    im = decode_image(path, channels, draft_size=size)
    im.thumbnail((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im)


def resize_to_square(im: Image.Image, prep: Preprocessing) -> Image.Image:
    """Resize to ``prep.image_size`` squared, squashing or centre-cropping as ``prep.resize`` says."""
    size = (prep.image_size, prep.image_size)
    resample = _RESAMPLE[prep.interpolation]
    if im.size == size:
        return im
    if prep.resize == "crop":
        return ImageOps.fit(im, size, method=resample)
    return im.resize(size, resample=resample)


def image_to_array(im: Image.Image, prep: Preprocessing) -> np.ndarray:
    """An already decoded RGB/L Pillow image -> uint8 array of shape ``(C, H, W)`` for the model."""
    im = resize_to_square(to_mode(im, prep.channels), prep)
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None, :, :]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def load_pixels(
    path: str | os.PathLike[str], prep: Preprocessing, *, with_hash: bool = False
) -> tuple[np.ndarray, str | None]:
    """Read one file and prepare it: uint8 ``(C, H, W)`` pixels, plus the sha256 of its bytes if asked.

    The file is read once; hashing and decoding share the bytes.

    Raises:
        ImageDecodeError: the file cannot be read or decoded.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(path, "is a folder, not an image file") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read ({exc.strerror or exc})") from None
    digest = hashlib.sha256(raw).hexdigest() if with_hash else None
    im = decode_image(raw, prep.channels, draft_size=prep.image_size, name=path)
    return image_to_array(im, prep), digest


def normalize(pixels: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` pixels -> float32 model input ``(x / 255 - mean) / std``."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in prep.std], dtype=torch.float32, device=pixels.device)
    shift = torch.tensor([m / s for m, s in zip(prep.mean, prep.std)], dtype=torch.float32, device=pixels.device)
    x = pixels.to(torch.float32)
    return x.mul_(scale.view(1, -1, 1, 1)).sub_(shift.view(1, -1, 1, 1))  # one pass less than /255, -mean, /std


def normalize_unit(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """float ``(N, C, H, W)`` pixels in [0, 1] -> model input ``(x - mean) / std``."""
    mean = torch.tensor(prep.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def denormalize(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Model-space images back to [0, 1] for display (clamped)."""
    mean = torch.tensor(prep.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)


@dataclass
class Batch:
    """A collated batch of prepared images; files that failed are listed, not included."""

    indices: list[int]  # positions in the dataset of the images in ``pixels``
    pixels: torch.Tensor  # uint8 (n, C, H, W)
    digests: list[str | None]  # sha256 of each included file, when hashing was asked for
    failures: list[tuple[int, str]] = field(default_factory=list)  # (position, reason) of dropped files


class ImageFileDataset(torch.utils.data.Dataset):
    """Image files prepared for a model; an unreadable file yields its failure instead of pixels."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], prep: Preprocessing, *, with_hash: bool = False):
        self.paths = [Path(p) for p in paths]
        self.prep = prep
        self.with_hash = with_hash

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None, str | None]:
        try:
            pixels, digest = load_pixels(self.paths[i], self.prep, with_hash=self.with_hash)
        except ImageDecodeError as exc:
            return i, None, None, exc.reason
        return i, pixels, digest, None


def collate_images(items: list[tuple[int, np.ndarray | None, str | None, str | None]]) -> Batch:
    """Stack the readable images of a batch; record the others as failures (never an empty-stack crash)."""
    good = [(i, px, d) for i, px, d, err in items if err is None]
    failures = [(i, err) for i, px, _, err in items if err is not None]
    if good:
        pixels = torch.from_numpy(np.stack([px for _, px, _ in good]))
    else:
        pixels = torch.empty((0,), dtype=torch.uint8)
    return Batch([i for i, _, _ in good], pixels, [d for _, _, d in good], failures)


def image_loader(
    paths: Sequence[str | os.PathLike[str]],
    prep: Preprocessing,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    with_hash: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over image files yielding :class:`Batch` objects in file order."""
    dataset = ImageFileDataset(paths, prep, with_hash=with_hash)
    num_workers = max(0, min(num_workers, len(dataset) // max(batch_size, 1)))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_images,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )


def arrays_to_pixels(images: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """In-memory uint8 images ``(n, h, w, c)`` (a built-in dataset) -> prepared ``(n, C, S, S)`` pixels."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise LookalikeError(f"expected uint8 images of shape (n, h, w, c), got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    if (h, w) == (prep.image_size, prep.image_size) and c == prep.channels:
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    out = np.empty((n, prep.channels, prep.image_size, prep.image_size), dtype=np.uint8)
    for i in range(n):
        im = Image.fromarray(images[i, :, :, 0] if c == 1 else images[i])
        out[i] = image_to_array(im, prep)
    return out
