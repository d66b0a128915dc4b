"""Pretrained weights files: the cache folder, checked downloads, and safe loading.

Any pretrained extractor uses these: a ``.safetensors`` file, or a ``.pth`` read with
``torch.load(weights_only=True)`` (tensors and plain containers only, never arbitrary objects), and a
download into ``$LOOKALIKE_CACHE/weights`` checked against the published sha256 (or its prefix).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import _download
from .._download import Progress, file_digest, os_reason
from ..errors import LookalikeError

logger = logging.getLogger(__name__)

WEIGHTS_MIRROR_ENV = "LOOKALIKE_WEIGHTS_MIRROR"
"""Environment variable: a base URL (``http://``, ``https://`` or ``file://``) replacing the weights' own."""

# --------------------------------------------------------------------------------------------------
# Weights files: generic helpers (any pretrained extractor can use them)
# --------------------------------------------------------------------------------------------------


def weights_cache_dir(cache_dir: Path | None = None) -> Path:
    """Return the folder pretrained weights are cached in.

    Args:
        cache_dir: The lookalike cache; defaults to :func:`lookalike.datasets.default_cache_dir`.

    Returns:
        ``<cache>/weights``.
    """
    if cache_dir is None:
        from lookalike.datasets import default_cache_dir  # numpy + Pillow only; kept out of import time

        cache_dir = default_cache_dir()
    return Path(cache_dir).expanduser() / "weights"


def weights_url(filename: str, base_url: str) -> str:
    """Return the URL a weights file is downloaded from.

    Args:
        filename: The file's name, appended to the base URL.
        base_url: The publisher's base URL.

    Returns:
        ``$LOOKALIKE_WEIGHTS_MIRROR`` (if set and non-empty) or ``base_url``, joined with ``filename``.
    """
    base = os.environ.get(WEIGHTS_MIRROR_ENV, "").strip() or base_url
    return base.rstrip("/") + "/" + filename


def ensure_weights_file(
    filename: str,
    sha256_prefix: str,
    *,
    base_url: str,
    what: str | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> Path:
    """Return the path of a verified weights file in the cache, downloading it if needed.

    Args:
        filename: The published file name, e.g. ``"vgg16-397923af.pth"``.
        sha256_prefix: What the file's SHA-256 hex digest must start with.
        base_url: Where the file is published (``$LOOKALIKE_WEIGHTS_MIRROR`` replaces it).
        what: How messages name the weights, e.g. ``"VGG16 ImageNet weights"`` (the default: ``"weights"``).
        cache_dir: The lookalike cache (the file goes in its ``weights`` folder); see :func:`weights_cache_dir`.
        download: Whether a missing or damaged file may be downloaded.
        timeout: Seconds to wait for the server to connect or to send more data.
        progress: Called as ``progress(bytes_done, bytes_total_or_None)`` while downloading.

    Returns:
        ``<cache>/weights/<filename>``, whose SHA-256 starts with ``sha256_prefix``.

    Raises:
        LookalikeError: If the file is not cached (or damaged) and ``download`` is false, the download fails
            or does not match, or the cache cannot be read or written.
    """
    directory = weights_cache_dir(cache_dir)
    path = directory / filename
    url = weights_url(filename, base_url)
    what = what or "weights"
    prefix = sha256_prefix.lower()
    if path.is_file():
        try:
            actual = file_digest(path, "sha256")
        except OSError as exc:
            raise LookalikeError(f"cannot read cached file {path}: {os_reason(exc)}") from exc
        if actual.startswith(prefix):
            logger.debug("using cached %s", path)
            return path
        if not download:
            raise LookalikeError(
                f"cached file {path} is damaged (sha256 {actual[:16]}…, expected {prefix}…) and downloading is "
                f"off; delete it, or allow downloading {url}"
            )
        logger.warning(
            "cached %s has sha256 %s, expected one starting with %s; fetching it again", path, actual, prefix
        )
    elif not download:
        raise LookalikeError(
            f"no {what} in the cache: put {filename} (published at {url}) in {directory}, pass a weights file, "
            "or allow downloading"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LookalikeError(f"cannot create cache directory {directory}: {os_reason(exc)}") from exc
    return _download.download(url, path, sha256_prefix=prefix, timeout=timeout, progress=progress)


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from a ``.safetensors`` file, or from a ``torch.save`` file with ``weights_only=True``.

    A ``torch.save`` file whose top-level dict wraps the state dict under ``"state_dict"`` or ``"model"``
    is unwrapped. Nothing is ever unpickled beyond what ``torch.load(weights_only=True)`` allows (tensors,
    plain containers and numbers), so a file holding arbitrary objects is refused rather than run.

    Args:
        path: The file: ``*.safetensors``, anything else is read as a ``torch.save`` file.

    Returns:
        The tensors by name, on the CPU.

    Raises:
        LookalikeError: One line naming the file: missing, unreadable, refused by ``weights_only``, or not
            a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise LookalikeError(f"weights file {path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            loaded: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise LookalikeError(f"cannot load weights file {path}: {_one_line(exc)}") from exc
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise LookalikeError(f"cannot load weights file {path}: {_unpickling_reason(exc)}") from exc
        except OSError as exc:
            raise LookalikeError(f"cannot load weights file {path}: {os_reason(exc)}") from exc
        except Exception as exc:  # garbage makes torch.load raise almost anything (struct.error, ...)
            raise LookalikeError(
                f"cannot load weights file {path}: not a readable torch.save file ({_one_line(exc)})"
            ) from exc
    return _as_state_dict(loaded, path)


def _as_state_dict(loaded: object, path: Path) -> dict[str, Tensor]:
    """Check that ``loaded`` is (or wraps, under "state_dict" or "model") a mapping of names to tensors."""
    if isinstance(loaded, Mapping) and not _all_tensors(loaded):
        for key in ("state_dict", "model"):
            inner = loaded.get(key)
            if isinstance(inner, Mapping) and _all_tensors(inner):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not _all_tensors(loaded):
        raise LookalikeError(f"cannot load weights file {path}: it does not hold a state dict of named tensors")
    return dict(loaded)


def _all_tensors(mapping: Mapping[Any, Any]) -> bool:
    return bool(mapping) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in mapping.items())


def _unpickling_reason(exc: pickle.UnpicklingError) -> str:
    """The useful line of torch's long ``weights_only`` message, e.g. "Unsupported global: GLOBAL a.B ..."."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|\. Please use|$)", text, re.DOTALL)
    if match and "Unsupported global" in match.group(1):
        detail = " ".join(match.group(1).split())
        return f"it holds objects other than tensors, which torch.load(weights_only=True) refuses ({detail})"
    if match:
        return f"not a readable torch.save file ({' '.join(match.group(1).split())})"
    return f"not a readable torch.save file ({_one_line(exc)})"


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
