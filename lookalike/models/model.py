"""The model users hold: a network plus the preprocessing it was trained with."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import Preprocessing, TrainConfig
from ..data import denormalize, image_to_array, load_pixels, normalize
from ..errors import LookalikeError
from ..serialization import read_model_dir, sha256_hex, weights_bytes, write_model_dir
from .autoencoders import ConvAutoencoder, build_network, init_weights
from .presets import resolve_preset

logger = logging.getLogger(__name__)

ImageLike = str | os.PathLike[str] | Image.Image | np.ndarray


PRECISIONS = ("auto", "fp32", "bf16")
PRETRAINED_CPU_BATCH = 64  # forward-pass batch of pretrained backbones on the CPU (measured fastest)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads, restoring the previous count after."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _blas_controllers() -> tuple[Any, ...]:
    """threadpoolctl's handles on the BLAS libraries loaded now (numpy's OpenBLAS), looked up once (1 ms);
    () without threadpoolctl. A BLAS library loaded later (by faiss, say) is not among them."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - scikit-learn brings it
        return ()
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


def blas_threads() -> list[int]:
    """The thread count of each BLAS library :func:`compute_threads` controls."""
    return [lib.get_num_threads() for lib in _blas_controllers()]


def set_blas_threads(n: int, *, rescan: bool = False) -> list[tuple[Any, int]]:
    """Set every BLAS library :func:`blas_threads` controls to ``n`` threads, process-wide; returns what
    to give :func:`restore_blas_threads`. ``rescan`` first looks again for the BLAS libraries loaded now
    (faiss's, say, loaded after the first call). One mechanism for the search planner and the server's
    engine: threadpoolctl's ``limit()`` beside these handles did not always take effect."""
    if rescan:
        _blas_controllers.cache_clear()
    changed = []
    for lib in _blas_controllers():
        before = lib.get_num_threads()
        if before != n:
            lib.set_num_threads(n)
            changed.append((lib, before))
    return changed


def restore_blas_threads(changed: list[tuple[Any, int]]) -> None:
    """Undo :func:`set_blas_threads`."""
    for lib, before in reversed(changed):
        lib.set_num_threads(before)


@contextlib.contextmanager
def compute_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads and ``n`` BLAS threads (numpy's OpenBLAS), restoring
    both after. Both settings are process-wide, as :func:`torch_threads`'s is; setting and restoring them
    costs a few microseconds (threadpoolctl's ``limit()`` would cost 17)."""
    changed: list[tuple[Any, int]] = []
    try:
        changed = set_blas_threads(n)
        with torch_threads(n):
            yield
    finally:
        restore_blas_threads(changed)


def cpu_supports_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX), so bf16 inference is faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on a CPU with native bfloat16, else ``fp32``."""
    if precision not in PRECISIONS:
        raise LookalikeError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"
    return precision


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when present, else cpu; anything else is checked to exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LookalikeError(f"device {device!r} requested but no CUDA GPU is available")
    return dev


class Model:
    """A convolutional autoencoder whose encoder turns images into embeddings.

    Build one with :meth:`from_preset` (untrained), :func:`lookalike.train` (trained) or :meth:`load`.

    Attributes:
        network: the torch module (``encode``/``decode``/``forward``).
        preprocessing: how images are prepared for it, saved with it.
        architecture: architecture name; ``arch_kwargs`` its keyword arguments.
        preset: the preset it was made from.
        train_config: how it was (or will be) trained.
    """

    def __init__(
        self,
        network: ConvAutoencoder,
        preprocessing: Preprocessing,
        *,
        architecture: str,
        arch_kwargs: dict[str, Any],
        preset: str,
        train_config: TrainConfig | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.network = network
        self.preprocessing = preprocessing
        self.architecture = architecture
        self.arch_kwargs = dict(arch_kwargs)
        self.preset = preset
        self.train_config = train_config or TrainConfig()
        self.info: dict[str, Any] = dict(info or {})  # training summary: epochs done, losses, images
        self.precision = "fp32"  # inference precision of embed(): "fp32" or "bf16" (see set_precision)
        self._fingerprint: str | None = None
        self._bf16_network: Callable[[torch.Tensor], torch.Tensor] | None = None

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_preset(
        cls,
        preset: str = "default",
        *,
        image_size: int | None = None,
        latent_dim: int | None = None,
        channels: int | None = None,
        arch_overrides: dict[str, Any] | None = None,
        **train_overrides: Any,
    ) -> Model:
        """An untrained model from a preset, with optional overrides (see :mod:`lookalike.models.presets`).

        ``arch_overrides`` change the network's keyword arguments (for example ``{"widths": [32, 64, 128]}``);
        ``train_overrides`` change :class:`~lookalike.config.TrainConfig` fields (an ``augmentation`` dict
        is merged into the preset's).
        """
        try:
            arch, kwargs, prep, train = resolve_preset(
                preset,
                image_size=image_size,
                latent_dim=latent_dim,
                channels=channels,
                arch_overrides=arch_overrides,
                **train_overrides,
            )
            torch.manual_seed(train.seed)
            network = build_network(arch, in_channels=prep.channels, image_size=prep.image_size, **kwargs)
        except ValueError as exc:
            raise LookalikeError(str(exc)) from None
        init_weights(network, train.init)
        return cls(network, prep, architecture=arch, arch_kwargs=kwargs, preset=preset, train_config=train)

    @classmethod
    def pretrained(
        cls,
        name: str = "efficientnet-lite0",
        *,
        image_size: int | None = None,
        weights: str | os.PathLike[str] | None = None,
        download: bool = True,
    ) -> Model:
        """A pretrained extractor (see :mod:`lookalike.models.pretrained`) as a model: embeds, saves, loads.

        Args:
            name: ``efficientnet-lite0``, ``efficientnet-lite2``, ``vgg16-fc1`` or a name given to
                :func:`~lookalike.models.pretrained.register_extractor`.
            image_size: input side in pixels (images are resized to it); default: the extractor's.
            weights: a ``.safetensors`` or ``.pth`` file to use instead of the installed weights.
            download: for extractors whose weights are downloaded (``vgg16-fc1``), allow the download.

        Raises:
            LookalikeError: unknown name, weights not installed (the message says which extra), or weights
                that do not fit.
        """
        from .pretrained import build_pretrained

        net, prep, info = build_pretrained(name, image_size=image_size, weights=weights, download=download)
        return cls(net, prep, architecture="pretrained", arch_kwargs={"backbone": name, "head": None},
                   preset=name, info=info)  # fmt: skip

    # -------------------------------------------------------------------------------------- properties
    @property
    def is_pretrained(self) -> bool:
        """True for a pretrained extractor (no decoder, nothing to train but an optional head)."""
        return self.architecture == "pretrained"

    @property
    def extractor(self) -> str:
        """What makes the embeddings: the pretrained backbone's name (``+head`` when adapted), else ``autoencoder``."""
        if not self.is_pretrained:
            return "autoencoder"
        head = self.arch_kwargs.get("head")
        return self.arch_kwargs["backbone"] + (f"+{head['name']}" if head and head.get("name") else "")

    @property
    def embedding_dim(self) -> int:
        """Length of the embedding vectors."""
        return self.network.embedding_dim

    @property
    def device(self) -> torch.device:
        """Where the network's weights live (the CPU for a network without any, like raw pixels)."""
        tensor = next(iter([*self.network.parameters(), *self.network.buffers()]), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    def fingerprint(self) -> str:
        """sha256 of the weights as saved: names the exact model an index was built with."""
        if self._fingerprint is None:
            self._fingerprint = sha256_hex(weights_bytes(self.network.state_dict()))
        return self._fingerprint

    def mark_changed(self) -> None:
        """Forget the cached fingerprint and bf16 copy after the weights changed (training does this)."""
        self._fingerprint = None
        self._bf16_network = None

    def to(self, device: str | torch.device) -> Model:
        """Move the network to a device (``"auto"`` picks cuda when present)."""
        dev = resolve_device(device) if isinstance(device, str) else device
        self.network.to(dev)
        self._bf16_network = None
        return self

    def set_precision(self, precision: str) -> Model:
        """Choose the inference precision of :meth:`embed`: ``fp32``, ``bf16`` or ``auto``.

        ``auto`` picks bfloat16 on CPUs that compute it natively and fp32 elsewhere. On this project's CPU
        bf16 encodes the default autoencoder about 1.7x faster with embeddings within cosine 0.9999 of
        fp32, and EfficientNet-Lite0 3-4x faster within cosine 0.975 (0.997 on average) with the same
        retrieval quality (BENCHMARKS.md). Training always runs in fp32.
        """
        has_weights = any(True for _ in self.network.parameters())
        self.precision = resolve_precision(precision, self.device) if has_weights else "fp32"  # raw pixels stay exact
        self._bf16_network = None
        return self

    def _encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function ``embed_pixels`` calls: the network's ``encode`` in the chosen precision.

        For bf16 on the CPU the encoder is a bfloat16 copy, traced and frozen once (oneDNN then keeps
        its weights pre-packed: about 1.5x faster than eager bf16 for single queries); if tracing fails
        the eager copy is used.
        """
        if self.precision != "bf16":
            if self.network.training:  # eval() walks every module: only when needed (0.4 ms a query)
                self.network.eval()
            return self.network.encode
        if self._bf16_network is None:
            net = copy.deepcopy(self.network).to(torch.bfloat16).eval()
            self._bf16_network = _freeze_encoder(net, self.input_shape) if self.device.type == "cpu" else net.encode
        return self._bf16_network

    def config(self) -> dict[str, Any]:
        """What ``config.json`` records about this model."""
        return {
            "preset": self.preset,
            "architecture": {"name": self.architecture, "in_channels": self.preprocessing.channels,
                             "image_size": self.preprocessing.image_size, **self.arch_kwargs},
            "embedding_dim": self.embedding_dim,
            "preprocessing": self.preprocessing.to_dict(),
            "training": self.train_config.to_dict(),
            "info": self.info,
        }  # fmt: skip

    def describe(self) -> str:
        """One line: preset, architecture, input, embedding size."""
        p = self.preprocessing
        mode = "RGB" if p.channels == 3 else "grey"
        if self.is_pretrained:
            return (f"{self.extractor} (pretrained, {p.image_size}x{p.image_size} RGB -> {self.embedding_dim}-d, "
                    f"{sum(t.numel() for t in self.network.parameters()):,} parameters)")  # fmt: skip
        return (
            f"{self.preset} ({self.architecture}, {p.image_size}x{p.image_size} {mode} -> "
            f"{self.embedding_dim}-d, {sum(t.numel() for t in self.network.parameters()):,} parameters)"
        )

    # ------------------------------------------------------------------------------------------ saving
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically, file by file)."""
        self._fingerprint = write_model_dir(directory, self.config(), self.network.state_dict())
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str = "cpu") -> Model:
        """Load a model directory written by :meth:`save`.

        Raises:
            LookalikeError: not a model directory, another format version, or weights that do not fit.
        """
        config, state = read_model_dir(directory)
        try:
            arch = dict(config["architecture"])
            name = arch.pop("name")
            prep = Preprocessing.from_dict(config["preprocessing"])
            network = build_network(name, **arch)
            network.load_state_dict(state, strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0]
            raise LookalikeError(f"{Path(directory) / 'config.json'}: model does not load ({reason})") from None
        arch.pop("in_channels", None)
        arch.pop("image_size", None)
        model = cls(
            network,
            prep,
            architecture=name,
            arch_kwargs=arch,
            preset=config.get("preset", name),
            train_config=TrainConfig.from_dict(config.get("training", {})),
            info=config.get("info", {}),
        )
        model._fingerprint = config.get("weights_sha256")
        return model.to(device)

    # --------------------------------------------------------------------------------------- inference
    def prepare(self, image: ImageLike) -> np.ndarray:
        """One image (path, Pillow image, or HxW[xC] uint8 array) -> uint8 ``(C, S, S)`` model pixels."""
        if isinstance(image, Image.Image):
            return image_to_array(image, self.preprocessing)
        if isinstance(image, np.ndarray):
            arr = image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[:, :, 0]
            return image_to_array(Image.fromarray(arr), self.preprocessing)
        return load_pixels(image, self.preprocessing)[0]

    @torch.inference_mode()
    def embed_pixels(
        self, pixels: np.ndarray | torch.Tensor, batch_size: int = 256, *, threads: int | None = None
    ) -> np.ndarray:
        """Prepared uint8 pixels ``(n, C, S, S)`` -> raw (not normalised) float32 embeddings ``(n, d)``.

        ``threads`` caps torch's threads for this call (None keeps the current setting).
        """
        pixels = torch.as_tensor(pixels)
        if pixels.ndim != 4 or pixels.shape[1:] != self.input_shape:
            raise LookalikeError(f"expected pixels of shape (n, {', '.join(map(str, self.input_shape))}), "
                                 f"got {tuple(pixels.shape)}")  # fmt: skip
        encode = self._encoder()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        dev = self.device
        out = np.empty((len(pixels), self.embedding_dim), dtype=np.float32)
        if self.is_pretrained and dev.type == "cpu":
            # Deep backbones at 64+ px: batches of 64 keep the activations in cache (Lite0 at 128 px on 2
            # cores: 346 img/s at 64, 213 at 256; benchmarks/compare_cifar10.py --sections speed)
            batch_size = min(batch_size, PRETRAINED_CPU_BATCH)
        with torch_threads(threads or torch.get_num_threads()):
            for start in range(0, len(pixels), batch_size):
                x = normalize(pixels[start : start + batch_size].to(dev), self.preprocessing).to(dtype)
                if dev.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                out[start : start + len(x)] = encode(x).float().cpu().numpy()
        return out

    def embed(self, images: Iterable[ImageLike], batch_size: int = 256, *, threads: int | None = None) -> np.ndarray:
        """Images (paths, Pillow images or arrays) -> raw float32 embeddings ``(n, d)``.

        Raises:
            ImageDecodeError: an image file cannot be read (the message names it).
        """
        prepared = [self.prepare(im) for im in images]
        if not prepared:
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        return self.embed_pixels(np.stack(prepared), batch_size=batch_size, threads=threads)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, S, S)`` of the prepared pixels."""
        p = self.preprocessing
        return (p.channels, p.image_size, p.image_size)

    @torch.inference_mode()
    def reconstruct(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """Prepared uint8 pixels -> the autoencoder's reconstructions as uint8 ``(n, C, S, S)``."""
        if self.is_pretrained:
            raise LookalikeError(f"{self.extractor} is a pretrained extractor: it has no decoder to reconstruct with")
        x = normalize(torch.as_tensor(pixels).to(self.device), self.preprocessing)
        recon = denormalize(self.network.eval()(x)[0].float(), self.preprocessing)
        return (recon * 255).round().to(torch.uint8).cpu().numpy()

    def __repr__(self) -> str:
        return f"Model({self.describe()})"


class _Encode(torch.nn.Module):
    """``forward`` = the network's ``encode``, so the encoder alone can be traced."""

    def __init__(self, net: ConvAutoencoder) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x)


def _freeze_encoder(net: ConvAutoencoder, input_shape: tuple[int, int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Trace and freeze a (bf16, CPU) network's encoder; the eager ``encode`` if that fails."""
    dtype = torch.bfloat16
    example = torch.zeros(2, *input_shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(torch.jit.trace(_Encode(net).eval(), example))
            probe = torch.zeros(3, *input_shape, dtype=dtype)
            if not torch.allclose(frozen(probe).float(), net.encode(probe).float(), rtol=1e-2, atol=1e-2):
                raise RuntimeError("traced encoder disagrees with the eager one")
    except Exception as exc:  # tracing is an optimisation only
        logger.info("using the eager bf16 encoder (%s)", exc)
        return net.encode
    return frozen
