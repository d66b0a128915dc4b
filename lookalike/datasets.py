"""Built-in image datasets: CIFAR-10, MNIST and scikit-learn's digits, as plain numpy arrays.

Three sets are known (see :data:`DATASETS`):

* ``"cifar10"``: 60,000 32×32 colour images in 10 classes, read from the *binary* version of the
  archive published by its authors (``cifar-10-binary.tar.gz``). The Python "pickle" version is
  never used: this project does not unpickle files it did not create.
* ``"mnist"``: 70,000 28×28 grey handwritten digits, read from the four idx ``.gz`` files.
* ``"digits"``: scikit-learn's 1,797 8×8 grey digits, shipped inside the scikit-learn wheel, so
  always available offline. There is no separate test set: ``"train"`` and ``"test"`` both return
  all 1,797 images.

Downloads are streamed with :mod:`urllib.request` into a ``.part`` file in the cache directory,
their MD5 checksum (the digest the dataset authors publish) is verified, and only then are they
renamed into place; a file already in the cache with the right checksum is never downloaded again.
Decoded arrays are cached beside the downloads as ``.npy`` files (loaded with
``allow_pickle=False``), so later loads skip the decoding.

Environment variables:

* ``LOOKALIKE_CACHE``: the cache directory (default ``~/.cache/lookalike``); each dataset gets a
  sub-directory named after it.
* ``LOOKALIKE_DATASETS_MIRROR``: a base URL (``http://``, ``https://`` or ``file://``) that replaces
  every dataset's own base URL; the file names (``cifar-10-binary.tar.gz``,
  ``train-images-idx3-ubyte.gz``, ...) are appended to it. Use it for a local mirror, or to point the
  tests at a local HTTP server. The checksums are still verified.

The registry entries are plain (mutable) dataclasses, so tests may also replace a dataset's
``base_url`` or its files' checksums, e.g. with ``monkeypatch.setitem(DATASETS, "cifar10", ...)``.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import struct
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike._download import DownloadError, Progress, file_digest, os_reason
from lookalike._download import download as _download_file
from lookalike._fs import make_temp_dir
from lookalike.errors import LookalikeError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DownloadError",
    "ImageArrays",
    "MIRROR_ENV",
    "CACHE_ENV",
    "RemoteFile",
    "default_cache_dir",
    "export_dataset",
    "load_dataset",
    "load_demo_dataset",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "LOOKALIKE_CACHE"
MIRROR_ENV = "LOOKALIKE_DATASETS_MIRROR"
SPLITS = ("train", "test")

_USER_AGENT = "lookalike-datasets/1 (+https://pypi.org/project/lookalike/)"
_CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_RECORD = 1 + 32 * 32 * 3
_CIFAR_MAX_MEMBER = 64 * 1024 * 1024  # the real batches are 30,730,000 bytes
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049


# --------------------------------------------------------------------------------------------------
# Public data types and registry
# --------------------------------------------------------------------------------------------------


@dataclass
class ImageArrays:
    """A dataset split held in memory.

    Attributes:
        name: The dataset's registry name: ``"cifar10"``, ``"mnist"`` or ``"digits"``.
        split: ``"train"`` or ``"test"``.
        images: ``uint8`` array of shape ``(n, h, w, c)``; ``c`` is 3 (RGB) or 1 (grey).
        labels: ``int64`` array of shape ``(n,)``; each value indexes :attr:`classes`.
        classes: The class names; ``classes[label]`` names a label.
        source: One human-readable line saying where the arrays came from.
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    source: str

    def __len__(self) -> int:
        """Return the number of images."""
        return int(self.images.shape[0])


@dataclass
class RemoteFile:
    """One file a dataset is built from.

    Attributes:
        filename: The file's name, appended to the base URL and used in the cache.
        md5: The published MD5 hex digest of the file.
        splits: The splits that need this file.
    """

    filename: str
    md5: str
    splits: tuple[str, ...] = SPLITS


@dataclass
class DatasetInfo:
    """A registry entry describing one built-in dataset.

    Attributes:
        name: The registry name.
        title: The name shown to people, e.g. ``"CIFAR-10"``.
        description: One line describing the images.
        base_url: Where the files live (a file name is appended); ``None`` for a bundled set.
        files: The remote files, with their checksums.
        classes: The class names, index = label.
        image_shape: ``(h, w, c)`` of every image.
        split_sizes: The number of images in each split of the real dataset.
    """

    name: str
    title: str
    description: str
    base_url: str | None
    files: tuple[RemoteFile, ...]
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    split_sizes: dict[str, int] = field(default_factory=dict)

    def url(self, remote: RemoteFile) -> str:
        """Return the URL one of this dataset's files is downloaded from.

        Args:
            remote: One of :attr:`files`.

        Returns:
            ``$LOOKALIKE_DATASETS_MIRROR`` (if set) or :attr:`base_url`, joined with the file name.

        Raises:
            LookalikeError: If the dataset has no remote files.
        """
        base = os.environ.get(MIRROR_ENV, "").strip() or self.base_url
        if not base:
            raise LookalikeError(f"dataset {self.name!r} has no download location")
        return base.rstrip("/") + "/" + remote.filename


_DIGIT_CLASSES = tuple(str(i) for i in range(10))

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        title="CIFAR-10",
        description="60,000 32×32 colour photos in 10 classes (airplane, cat, ship, ...)",
        base_url="https://www.cs.toronto.edu/~kriz/",
        files=(RemoteFile("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),),
        classes=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        image_shape=(32, 32, 3),
        split_sizes={"train": 50_000, "test": 10_000},
    ),
    "mnist": DatasetInfo(
        name="mnist",
        title="MNIST",
        description="70,000 28×28 grey handwritten digits",
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files=(
            RemoteFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", ("train",)),
            RemoteFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", ("train",)),
            RemoteFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", ("test",)),
            RemoteFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", ("test",)),
        ),
        classes=_DIGIT_CLASSES,
        image_shape=(28, 28, 1),
        split_sizes={"train": 60_000, "test": 10_000},
    ),
    "digits": DatasetInfo(
        name="digits",
        title="scikit-learn digits",
        description="scikit-learn's bundled 1,797 8×8 grey digits (always offline; test = train)",
        base_url=None,
        files=(),
        classes=_DIGIT_CLASSES,
        image_shape=(8, 8, 1),
        split_sizes={"train": 1_797, "test": 1_797},
    ),
}
"""The built-in datasets, by name."""


class _NotCachedError(LookalikeError):
    """A dataset file is missing from the cache and downloading is off."""


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Return the dataset cache directory.

    Returns:
        ``$LOOKALIKE_CACHE`` if it is set and non-empty, else ``~/.cache/lookalike``.
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lookalike"


def load_dataset(
    name: str,
    split: str = "train",
    *,
    cache_dir: Path | None = None,
    download: bool = True,
    timeout: float = 5.0,
    progress: Progress | None = None,
) -> ImageArrays:
    """Load one split of a built-in dataset, downloading it into the cache if needed.

    Args:
        name: A key of :data:`DATASETS`: ``"cifar10"``, ``"mnist"`` or ``"digits"``.
        split: ``"train"`` or ``"test"``. For ``"digits"`` both are the same 1,797 images.
        cache_dir: The cache directory; defaults to :func:`default_cache_dir`.
        download: Whether files missing from the cache may be downloaded.
        timeout: Seconds to wait for the server to connect or to send more data.
        progress: Called as ``progress(bytes_done, bytes_total_or_None)`` while downloading.

    Returns:
        The split's images, labels and class names.

    Raises:
        LookalikeError: For an unknown name or split, a download that fails or does not match its
            checksum, a file missing from the cache with ``download=False``, or a corrupt file.
    """
    info = _dataset_info(name)
    if split not in SPLITS:
        raise LookalikeError(f"unknown split {split!r} for dataset {name!r}; expected 'train' or 'test'")
    if name == "digits":
        return _load_digits(split)

    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory = directory.expanduser() / info.name
    cached = _load_npy_cache(directory, info, split)
    if cached is not None:
        images, labels = cached
        logger.debug("loaded %s %s from the decoded cache in %s", name, split, directory)
        return ImageArrays(name, split, images, labels, list(info.classes), f"cache {_show(directory)}")

    needed = [remote for remote in info.files if split in remote.splits]
    downloaded: list[str] = []
    paths: dict[str, Path] = {}
    for remote in needed:
        path, fetched = _ensure_file(info, remote, directory, download, timeout, progress)
        paths[remote.filename] = path
        if fetched:
            downloaded.append(info.url(remote))

    if name == "cifar10":
        decoded = _decode_cifar(paths[info.files[0].filename], info)
    elif name == "mnist":
        decoded = {split: _decode_mnist(info, split, paths)}
    else:  # pragma: no cover - the registry only holds the three sets above
        raise LookalikeError(f"dataset {name!r} has no loader")

    for decoded_split, (images, labels) in decoded.items():
        _save_npy_cache(directory, decoded_split, images, labels)
    images, labels = decoded[split]
    if downloaded:
        source = "downloaded from " + (downloaded[0] if len(downloaded) == 1 else _common_base(downloaded))
    else:
        source = f"cache {_show(directory)}"
    return ImageArrays(name, split, images, labels, list(info.classes), source)


def load_demo_dataset(
    *,
    cache_dir: Path | None = None,
    download: bool = True,
    timeout: float = 3.0,
    progress: Progress | None = None,
) -> tuple[ImageArrays, str]:
    """Load a training set for the demo: CIFAR-10, else MNIST, else scikit-learn's digits.

    Each of CIFAR-10 and MNIST is taken from the cache, else downloaded (if ``download``). The
    digits come with scikit-learn, so the fallback works offline.

    Args:
        cache_dir: The cache directory; defaults to :func:`default_cache_dir`.
        download: Whether CIFAR-10 / MNIST may be downloaded.
        timeout: Seconds to wait for each server to connect or send more data.
        progress: Called as ``progress(bytes_done, bytes_total_or_None)`` while downloading.

    Returns:
        The train split, and one line for the user saying which dataset is used and why.

    Raises:
        LookalikeError: Only if every dataset, the bundled digits included, fails to load.
    """
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    failures: list[tuple[DatasetInfo, LookalikeError]] = []
    for name in ("cifar10", "mnist"):
        info = DATASETS[name]
        try:
            data = load_dataset(
                name, "train", cache_dir=directory, download=download, timeout=timeout, progress=progress
            )
        except LookalikeError as exc:
            logger.info("%s is not available: %s", info.title, exc)
            failures.append((info, exc))
            continue
        size = f"{len(data):,} {_shape_words(data)} images"
        if data.source.startswith("cache "):
            what = f"using {info.title} ({size}) from {data.source}"
        else:
            what = f"downloaded {info.title} ({size}) into {_show(directory / name)}"
        if failures:
            return data, f"{_failure_clause(failures, directory)}; {what} instead."
        return data, f"{what[0].upper()}{what[1:]}."

    try:
        digits = load_dataset("digits", "train")
    except LookalikeError as exc:
        raise LookalikeError(f"{_failure_clause(failures, directory)}; the fallback failed too: {exc}") from exc
    size = f"{len(digits):,} {_shape_words(digits)} images"
    return digits, f"{_failure_clause(failures, directory)}; using {digits.source} ({size}) instead."


def export_dataset(
    name: str,
    out_dir: Path,
    *,
    split: str = "train",
    limit: int | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
    progress: Progress | None = None,
) -> int:
    """Write a dataset split as PNG files, one folder per class.

    The files are ``out_dir/<class name>/<split>_<index:05d>.png`` (lossless), where ``index`` is the
    image's position in the split. Everything is written into a temporary directory beside
    ``out_dir`` and renamed into place at the end, so a failure never leaves half an export.

    Args:
        name: A key of :data:`DATASETS`.
        out_dir: The directory to create; it must not exist or be empty.
        split: ``"train"`` or ``"test"``.
        limit: At most this many images per class (the first ones of each class), for a balanced
            subset; ``None`` writes every image.
        cache_dir: The cache directory; defaults to :func:`default_cache_dir`.
        download: Whether files missing from the cache may be downloaded.
        progress: Called as ``progress(done, total)``: bytes while downloading, then images while
            writing.

    Returns:
        The number of images written.

    Raises:
        LookalikeError: If ``out_dir`` is a file or a non-empty directory, ``limit`` is not positive,
            the dataset cannot be loaded, or the files cannot be written.
    """
    out_dir = Path(out_dir).expanduser()
    if limit is not None and limit < 1:
        raise LookalikeError(f"cannot export to {out_dir}: limit must be at least 1 image per class, got {limit}")
    _check_export_target(out_dir)
    data = load_dataset(name, split, cache_dir=cache_dir, download=download, progress=progress)

    selected = _select_balanced(data.labels, len(data.classes), limit)
    folders = _class_folder_names(data.classes)
    total = int(selected.size)
    try:
        tmp = make_temp_dir(out_dir)
    except OSError as exc:
        raise LookalikeError(f"cannot export to {out_dir}: {os_reason(exc)}") from exc
    try:
        for label in np.unique(data.labels[selected]):
            (tmp / folders[int(label)]).mkdir()
        for done, index in enumerate(selected.tolist(), start=1):
            path = tmp / folders[int(data.labels[index])] / f"{split}_{index:05d}.png"
            _save_png(data.images[index], path)
            if progress is not None:
                progress(done, total)
        _check_export_target(out_dir)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty, checked above; os.replace onto a directory is not portable
        os.replace(tmp, out_dir)
    except OSError as exc:
        raise LookalikeError(f"cannot export to {out_dir}: {os_reason(exc)}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %d %s %s images to %s", total, name, split, out_dir)
    return total


# --------------------------------------------------------------------------------------------------
# Downloads and the cache
# --------------------------------------------------------------------------------------------------


def _dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise LookalikeError(f"unknown dataset {name!r}; choose one of: {known}") from None


def _ensure_file(
    info: DatasetInfo,
    remote: RemoteFile,
    directory: Path,
    download: bool,
    timeout: float,
    progress: Progress | None,
) -> tuple[Path, bool]:
    """Return the cached path of ``remote`` (downloading it if needed) and whether it was downloaded."""
    path = directory / remote.filename
    if path.is_file():
        try:
            actual = file_digest(path, "md5")
        except OSError as exc:
            raise LookalikeError(f"cannot read cached file {path}: {os_reason(exc)}") from exc
        if actual == remote.md5.lower():
            logger.debug("using cached %s", path)
            return path, False
        logger.warning("cached %s has md5 %s, expected %s; fetching it again", path, actual, remote.md5)
        if not download:
            raise LookalikeError(
                f"cached file {path} is damaged (md5 {actual}, expected {remote.md5}) and downloading is off"
            )
    elif not download:
        raise _NotCachedError(f"{info.title} is not in the cache {_show(directory)} and downloading is off")

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LookalikeError(f"cannot create cache directory {directory}: {os_reason(exc)}") from exc
    _download_file(info.url(remote), path, md5=remote.md5, timeout=timeout, progress=progress, user_agent=_USER_AGENT)
    return path, True


def _npy_paths(directory: Path, split: str) -> tuple[Path, Path]:
    return directory / f"{split}_images.npy", directory / f"{split}_labels.npy"


def _load_npy_cache(directory: Path, info: DatasetInfo, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the decoded arrays cached for ``split``, or ``None`` if absent or unusable."""
    images_path, labels_path = _npy_paths(directory, split)
    if not (images_path.is_file() and labels_path.is_file()):
        return None
    try:
        images = np.load(images_path, allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        logger.warning("ignoring the unreadable decoded cache in %s: %s", directory, exc)
        return None
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or tuple(images.shape[1:]) != info.image_shape
        or labels.dtype != np.int64
        or labels.shape != (images.shape[0],)
        or (labels.size and (labels.min() < 0 or labels.max() >= len(info.classes)))
    ):
        logger.warning("ignoring the inconsistent decoded cache in %s", directory)
        return None
    return images, labels


def _save_npy_cache(directory: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Cache decoded arrays (best effort: a failure is logged, not raised)."""
    for path, array in zip(_npy_paths(directory, split), (images, labels), strict=True):
        tmp = path.with_name(path.name + ".part")
        try:
            with tmp.open("wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("could not cache decoded arrays in %s: %s", path, exc)
            tmp.unlink(missing_ok=True)
            return


# --------------------------------------------------------------------------------------------------
# Decoders
# --------------------------------------------------------------------------------------------------


def _decode_cifar(archive: Path, info: DatasetInfo) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read both splits from the CIFAR-10 binary archive without extracting anything.

    Only the six expected batch members (and ``batches.meta.txt``) are read, straight into memory;
    every other member is skipped, so no path from the archive ever reaches the file system.
    """
    members = {f"{_CIFAR_DIR}/data_batch_{i}.bin": "train" for i in range(1, 6)}
    members[f"{_CIFAR_DIR}/test_batch.bin"] = "test"
    meta_name = f"{_CIFAR_DIR}/batches.meta.txt"
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                member_name = member.name.removeprefix("./")
                if member_name not in members and member_name != meta_name:
                    continue
                if not member.isfile():
                    raise LookalikeError(f"corrupt CIFAR-10 archive {archive}: {member_name} is not a file")
                if member.size > _CIFAR_MAX_MEMBER:
                    raise LookalikeError(f"corrupt CIFAR-10 archive {archive}: {member_name} is {member.size:,} bytes")
                handle = tar.extractfile(member)
                if handle is None:  # pragma: no cover - isfile() was checked
                    continue
                raw = handle.read()
                if member_name == meta_name:
                    names = raw.decode("utf-8", "replace").split()
                    if names and tuple(names) != info.classes:
                        logger.warning("%s lists classes %s; using %s", archive, names, list(info.classes))
                else:
                    batches[member_name] = _decode_cifar_batch(raw, f"{archive}: {member_name}", info)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise LookalikeError(f"corrupt CIFAR-10 archive {archive}: {exc}") from exc

    missing = sorted(name for name in members if name not in batches)
    if missing:
        raise LookalikeError(f"corrupt CIFAR-10 archive {archive}: missing {', '.join(missing)}")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        parts = [batches[name] for name, member_split in members.items() if member_split == split]
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def _decode_cifar_batch(raw: bytes, where: str, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """Decode one batch: records of a label byte, then 1024 R, 1024 G and 1024 B bytes, row-major."""
    if not raw or len(raw) % _CIFAR_RECORD:
        raise LookalikeError(
            f"corrupt CIFAR-10 archive {where} is {len(raw):,} bytes, "
            f"not a whole number of {_CIFAR_RECORD}-byte records"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(info.classes):
        raise LookalikeError(f"corrupt CIFAR-10 archive {where} has label {labels.max()}, out of range")
    images = np.ascontiguousarray(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def _read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise LookalikeError(f"corrupt MNIST file {path}: not a valid gzip file ({exc})") from exc


def _parse_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte idx file (images: ``ndim`` 3, labels: ``ndim`` 1)."""
    raw = _read_gzip(path)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise LookalikeError(f"corrupt MNIST file {path}: {len(raw)} bytes is shorter than the idx header")
    (found_magic,) = struct.unpack(">I", raw[:4])
    if found_magic != magic:
        raise LookalikeError(f"corrupt MNIST file {path}: idx magic number {found_magic}, expected {magic}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise LookalikeError(
            f"corrupt MNIST file {path}: header says {' × '.join(map(str, dims))} values "
            f"({expected:,} bytes) but the file holds {len(raw):,} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _decode_mnist(info: DatasetInfo, split: str, paths: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images_path = paths[f"{prefix}-images-idx3-ubyte.gz"]
    labels_path = paths[f"{prefix}-labels-idx1-ubyte.gz"]
    images = _parse_idx(images_path, _IDX_IMAGES_MAGIC, 3)
    labels = _parse_idx(labels_path, _IDX_LABELS_MAGIC, 1).astype(np.int64)
    h, w, _ = info.image_shape
    if images.shape[1:] != (h, w):
        raise LookalikeError(
            f"corrupt MNIST file {images_path}: images are {images.shape[1]}×{images.shape[2]}, expected {h}×{w}"
        )
    if images.shape[0] != labels.shape[0]:
        raise LookalikeError(
            f"corrupt MNIST file {labels_path}: {labels.shape[0]:,} labels for {images.shape[0]:,} images"
        )
    if labels.size and labels.max() >= len(info.classes):
        raise LookalikeError(f"corrupt MNIST file {labels_path}: label {labels.max()} is out of range")
    return np.ascontiguousarray(images[..., np.newaxis]), labels


def _load_digits(split: str) -> ImageArrays:
    """scikit-learn's digits, 0..16 scaled to 0..255; both splits are all 1,797 images."""
    info = DATASETS["digits"]
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise LookalikeError(f"scikit-learn's digits need scikit-learn, which cannot be imported: {exc}") from exc
    bunch = load_digits()
    scaled = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    images = np.clip(scaled, 0, 255).astype(np.uint8)[..., np.newaxis]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return ImageArrays("digits", split, images, labels, list(info.classes), "scikit-learn's bundled digits")


# --------------------------------------------------------------------------------------------------
# Export helpers and messages
# --------------------------------------------------------------------------------------------------


def _check_export_target(out_dir: Path) -> None:
    if out_dir.is_dir():
        try:
            non_empty = any(out_dir.iterdir())
        except OSError as exc:
            raise LookalikeError(f"cannot export to {out_dir}: {os_reason(exc)}") from exc
        if non_empty:
            raise LookalikeError(f"cannot export to {out_dir}: the directory is not empty")
    elif out_dir.exists():
        raise LookalikeError(f"cannot export to {out_dir}: it exists and is not a directory")


def _select_balanced(labels: np.ndarray, n_classes: int, limit: int | None) -> np.ndarray:
    """Indices of the first ``limit`` images of each class (all if ``None``), in dataset order."""
    if limit is None:
        return np.arange(labels.shape[0])
    keep = np.zeros(labels.shape[0], dtype=bool)
    for label in range(n_classes):
        keep[np.flatnonzero(labels == label)[:limit]] = True
    return np.flatnonzero(keep)


def _class_folder_names(classes: Iterable[str]) -> list[str]:
    names = []
    for index, name in enumerate(classes):
        safe = re.sub(r"[^\w.+-]+", "_", name).strip("._") or f"class_{index}"
        names.append(safe)
    return names


def _save_png(image: np.ndarray, path: Path) -> None:
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG")


def _show(path: Path) -> str:
    """A path for messages, with the home directory shortened to ``~``."""
    try:
        return "~/" + path.relative_to(Path.home()).as_posix()
    except (ValueError, RuntimeError):
        return str(path)


def _common_base(urls: list[str]) -> str:
    prefix = os.path.commonprefix(urls)
    return prefix[: prefix.rfind("/") + 1] if "/" in prefix else urls[0]


def _shape_words(data: ImageArrays) -> str:
    _, h, w, c = data.images.shape
    return f"{h}×{w} {'colour' if c == 3 else 'grey'}"


def _failure_clause(failures: list[tuple[DatasetInfo, LookalikeError]], directory: Path) -> str:
    """E.g. "CIFAR-10 and MNIST could not be downloaded (Connection refused)"."""
    titles = " and ".join(info.title for info, _ in failures)
    errors = [exc for _, exc in failures]
    if all(isinstance(exc, _NotCachedError) for exc in errors):
        verb = "is" if len(errors) == 1 else "are"
        return f"{titles} {verb} not in the cache {_show(directory)} and downloading is off"
    reasons: list[str] = []
    for exc in errors:
        text = exc.reason if isinstance(exc, DownloadError) else " ".join(str(exc).split())
        if text not in reasons:
            reasons.append(text)
    verb = "downloaded" if all(isinstance(exc, DownloadError) for exc in errors) else "loaded"
    return f"{titles} could not be {verb} ({'; '.join(reasons)})"
