"""Find image files, decode them robustly, and prepare them exactly as a model expects.

What is opened and how it is decoded is :mod:`lookalike.decoding`'s policy (regular files, size and
pixel limits, accepted formats, ICC profiles, EXIF orientation, modes); this module finds the files
(:func:`scan_images` reports what it refuses), prepares pixels for a model, and batches them: unreadable
files are dropped by the batch collator and reported, never crash a batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ._callbacks import emit
from ._fs import worker_start
from .config import Preprocessing
from .decoding import (
    IMAGE_EXTENSIONS,
    decode_bytes,
    decode_file,
    file_kind,
    link_problem,
    os_problem,
    read_file,
    to_mode,
)
from .errors import ImageDecodeError, LookalikeError, display_path

logger = logging.getLogger(__name__)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name has one of the supported image extensions (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


@dataclass
class FolderScan:
    """The image files under a folder, and those found but refused before reading (with the reason)."""

    files: list[Path]  # absolute paths, sorted
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, one-line reason), sorted


def file_problem(
    path: str | os.PathLike[str], root: str | os.PathLike[str], *, follow_symlinks: bool = False
) -> str | None:
    """Why a file under ``root`` cannot be indexed, known before reading it; None when it can be read.

    Refused: a FIFO, socket or device (also behind a link), a link that is broken or loops, and a link
    whose target is outside ``root`` unless ``follow_symlinks``.
    """
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            try:
                target = os.stat(path).st_mode
            except OSError:  # broken, loops, or no permission
                return link_problem(path, root, follow_outside=follow_symlinks) or "cannot read the link"
            if not stat.S_ISREG(target):
                return f"not a regular file (a link to a {file_kind(target)})"
            return link_problem(path, root, follow_outside=follow_symlinks)
    except OSError as exc:
        return os_problem(exc)
    if stat.S_ISDIR(mode):
        return "is a folder, not an image file"
    if not stat.S_ISREG(mode):
        return f"not a regular file ({file_kind(mode)})"
    return None


def scan_images(
    root: str | os.PathLike[str], *, follow_symlinks: bool = False, links_inside: str | os.PathLike[str] | None = None
) -> FolderScan:
    """List the image files under ``root``, recursively, sorted by path; report what cannot be indexed.

    Candidates are files with an image extension (:data:`IMAGE_EXTENSIONS`); hidden files and folders
    (names starting with ``.``) are left out. Links to folders are not followed. Links to files are
    followed when their target is inside ``root`` (or anywhere, with ``follow_symlinks``); a link that
    leaves the folder, is broken or loops, a FIFO, socket or device, and a folder that cannot be listed
    are reported in :attr:`FolderScan.skipped` and never opened. ``links_inside`` is the folder links must
    stay in when it is not ``root`` itself (scanning a sub-folder of an indexed folder).

    Raises:
        LookalikeError: the folder is missing, is not a folder, is empty, or holds no images.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise LookalikeError(f"{display_path(root)}: folder does not exist")
    if not root.is_dir():
        raise LookalikeError(f"{display_path(root)}: not a folder")
    root = root.resolve()
    base = str(root)
    links = Path(links_inside).expanduser().resolve() if links_inside is not None else root
    found: list[str] = []  # plain strings while walking: Path objects cost a second per 50,000 files
    skipped: list[tuple[str, str]] = []
    seen_any = False
    stack = [base]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError as exc:
            skipped.append((folder, f"cannot list this folder ({exc.strerror or exc})"))
            continue
        with entries:
            for entry in entries:
                name = entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not name.startswith("."):
                            stack.append(entry.path)
                        continue
                    seen_any = True
                    if name.startswith("."):
                        continue
                    if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                        continue
                    if entry.is_file(follow_symlinks=False):
                        found.append(entry.path)
                        continue
                    if entry.is_symlink() and os.path.isdir(entry.path):  # (False for broken links and loops)
                        continue  # a link to a folder: not followed
                    problem = file_problem(entry.path, links, follow_symlinks=follow_symlinks)
                    if problem is None:
                        found.append(entry.path)
                        continue
                except OSError as exc:
                    problem = os_problem(exc)
                skipped.append((entry.path, problem))
    if not found and not skipped:
        if not seen_any:
            raise LookalikeError(f"{display_path(root)}: folder is empty")
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise LookalikeError(f"{display_path(root)}: no images found (looked for {exts})")
    found.sort(key=lambda p: p.split(os.sep))  # the order of sorting Path objects
    skipped.sort(key=lambda x: x[0].split(os.sep))
    return FolderScan([Path(p) for p in found], [(Path(p), why) for p, why in skipped])


def scan_readable(
    root: str | os.PathLike[str], *, follow_symlinks: bool = False, callbacks: Sequence[Any] = ()
) -> FolderScan:
    """:func:`scan_images`, reporting each skipped file (``on_skip(path, reason)`` of the callbacks, or
    the log without any) and refusing a folder whose every image file was skipped.

    Raises:
        LookalikeError: the folder is missing, is not a folder, is empty, or holds no images it can read.
    """
    scan = scan_images(root, follow_symlinks=follow_symlinks)
    for path, why in scan.skipped:
        if callbacks:
            emit(callbacks, "on_skip", path, why)
        else:
            logger.info("skipped %s: %s", display_path(path), why)
    if not scan.files:
        raise LookalikeError(
            f"{display_path(Path(root).expanduser())}: none of the {len(scan.skipped)} image files could be read "
            f"(the first: {display_path(scan.skipped[0][0])}: {scan.skipped[0][1]})"
        )
    return scan


def find_images(root: str | os.PathLike[str], *, follow_symlinks: bool = False) -> list[Path]:
    """The image files under ``root`` (see :func:`scan_readable`; what it skips is logged, not returned)."""
    return scan_readable(root, follow_symlinks=follow_symlinks).files


def decode_image(
    source: str | os.PathLike[str] | bytes,
    channels: int = 3,
    *,
    draft_size: int | None = None,
    name: str | os.PathLike[str] | None = None,
) -> Image.Image:
    """Decode an image file (or its bytes) to an oriented 8-bit RGB or L Pillow image.

    The policy is :mod:`lookalike.decoding`'s: regular files of at most ``MAX_FILE_BYTES``, the accepted
    formats, at most ``MAX_PIXELS`` decoded pixels, ICC profiles to sRGB, EXIF orientation, any mode.

    Args:
        source: a path, or the file's bytes.
        channels: 3 for RGB, 1 for greyscale.
        draft_size: the size the image will be resized to: large images are decoded (JPEG) and shrunk by
            whole factors towards it (much faster for large photos that will be shrunk anyway).
        name: the file name to put in error messages when ``source`` is bytes.

    Raises:
        ImageDecodeError: the file is missing, not a regular file, not an image, truncated, or too large.
    """
    if isinstance(source, bytes):
        label = name if name is not None else "<bytes>"
        return decode_bytes(source, channels, draft_size=draft_size, name=label).image
    return decode_file(source, channels, draft_size=draft_size).image


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
    raw = read_file(path)
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
        worker_init_fn=worker_start if num_workers else None,  # no lock kept, dies with its parent
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
