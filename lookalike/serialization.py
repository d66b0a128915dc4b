"""The on-disk formats: a model directory and a resumable training checkpoint.

A model directory holds ``config.json`` (format, library version, architecture, preprocessing, training
settings and the sha256 of the weights) and ``model.safetensors``. Checkpoints are separate: model,
optimiser and epoch in ``checkpoint.pt``, read back with ``torch.load(weights_only=True)``. Every file
is written to a temporary name in the same folder and renamed into place, so a crash or an error never
leaves a half-written model where a good one was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as dump_safetensors

from ._fs import atomic_write_bytes, make_dirs
from ._version import __version__
from .errors import LookalikeError

logger = logging.getLogger(__name__)

MODEL_FORMAT = "lookalike-model"
MODEL_FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PREVIOUS_WEIGHTS_NAME = ".model.safetensors.prev"  # the replaced weights while a save is under way
CHECKPOINT_NAME = "checkpoint.pt"


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object, turning every failure into a one-line LookalikeError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LookalikeError(f"{path}: not found ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LookalikeError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(data, dict):
        raise LookalikeError(f"{path}: unreadable {what} (not a JSON object)")
    return data


def weights_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """Serialise a state dict to safetensors bytes (tensors made contiguous, on the CPU)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return dump_safetensors(tensors, metadata={"format": "pt"})


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def write_model_dir(
    directory: str | os.PathLike[str], config: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> str:
    """Write ``config.json`` + ``model.safetensors`` into ``directory``; returns the weights' sha256.

    ``config`` gets ``format``, ``format_version``, ``lookalike_version`` and ``weights_sha256`` added.
    The weights are renamed into place before the config, and the config names their hash, so a reader
    never pairs a config with weights it does not describe. Replacing a model, the old weights are kept
    as ``.model.safetensors.prev`` (a hard link) until the new config is in place: a process killed
    between the two renames leaves the old config and the old weights readable (see
    :func:`read_model_dir`), never a mismatched pair.
    """
    directory = Path(directory)
    make_dirs(directory)
    data = weights_bytes(state_dict)
    digest = sha256_hex(data)
    full = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "lookalike_version": __version__,
        **config,
        "weights_sha256": digest,
    }
    weights, previous = directory / WEIGHTS_NAME, directory / PREVIOUS_WEIGHTS_NAME
    previous.unlink(missing_ok=True)
    if weights.exists() and (directory / CONFIG_NAME).exists():
        with contextlib.suppress(OSError):  # no hard links here: the plain order
            os.link(weights, previous)
    atomic_write_bytes(weights, data)
    atomic_write_json(directory / CONFIG_NAME, full)
    previous.unlink(missing_ok=True)
    return digest


def read_model_dir(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check a model directory: (config, state dict).

    Raises:
        LookalikeError: not a model directory, another format version, weights missing, corrupt or not
            the ones the config names.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise LookalikeError(f"{directory}: model directory does not exist")
    config_path = directory / CONFIG_NAME
    if not config_path.exists():
        raise LookalikeError(f"{directory}: not a lookalike model directory (no {CONFIG_NAME})")
    config = read_json(config_path, "model config")
    if config.get("format") != MODEL_FORMAT:
        raise LookalikeError(f"{config_path}: not a lookalike model config (format {config.get('format')!r})")
    version = config.get("format_version")
    saved_by = config.get("lookalike_version", "an unknown version")
    if version != MODEL_FORMAT_VERSION:
        newer = isinstance(version, int) and version > MODEL_FORMAT_VERSION
        hint = "upgrade lookalike to read it" if newer else "retrain it with this version"
        raise LookalikeError(
            f"{config_path}: model format {version} was written by lookalike {saved_by}; lookalike "
            f"{__version__} reads format {MODEL_FORMAT_VERSION} ({hint})"
        )
    if saved_by != __version__:
        logger.info("%s was saved by lookalike %s (this is %s)", directory, saved_by, __version__)
    weights_path = directory / WEIGHTS_NAME
    try:
        data = weights_path.read_bytes()
    except FileNotFoundError:
        raise LookalikeError(f"{weights_path}: missing model weights") from None
    if config.get("weights_sha256") not in (None, sha256_hex(data)):
        try:  # a save killed between its two renames: the old weights still go with the old config
            data = (directory / PREVIOUS_WEIGHTS_NAME).read_bytes()
        except OSError:
            data = b""
        if sha256_hex(data) != config.get("weights_sha256"):
            raise LookalikeError(f"{weights_path}: weights do not match {CONFIG_NAME} (sha256 differs)")
        logger.warning("%s: an interrupted save left new weights beside the old config; using the old model", directory)
    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise LookalikeError(f"{weights_path}: corrupt safetensors file ({exc})") from None
    return config, state


CHECKPOINT_TRAILER = b"\nlookalike-sha256:"  # + 64 hex digits of the bytes before it


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Save a training checkpoint (tensors, numbers, strings, lists, dicts) atomically, followed by the
    sha256 of its bytes, so a damaged checkpoint is refused instead of resumed from."""
    import io

    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data + CHECKPOINT_TRAILER + sha256_hex(data).encode("ascii"))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True`` (no arbitrary unpickling), after checking its
    sha256 (checkpoints written before the digest was added load without the check)."""
    import io

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LookalikeError(f"{path}: no checkpoint to resume from") from None
    except OSError as exc:
        raise LookalikeError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    cut = len(data) - len(CHECKPOINT_TRAILER) - 64
    if cut >= 0 and data[cut : cut + len(CHECKPOINT_TRAILER)] == CHECKPOINT_TRAILER:
        body, digest = data[:cut], data[cut + len(CHECKPOINT_TRAILER) :].decode("ascii", "replace")
        if sha256_hex(body) != digest:
            raise LookalikeError(f"{path}: damaged checkpoint (sha256 differs); train without --resume to start over")
        data = body
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or unsafe file
        raise LookalikeError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
