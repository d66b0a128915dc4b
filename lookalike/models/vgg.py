"""VGG16 up to its first fully connected layer (``fc1``), in plain torch, with torchvision's ImageNet weights.

Seed 002 takes Keras VGG16's ``fc1`` output (the first 4096-unit Dense layer after flattening the last
pooled feature map, with its ReLU) as an image's feature vector. :class:`VGG16Fc1` is the same network cut
at the same place, written without torchvision (which does not import beside the CPU torch here) but with
torchvision's module layout, so the state-dict keys of torchvision's ``vgg16()`` (``features.0.weight`` …
``features.28.bias``, ``classifier.0.weight``/``bias``) load into it unchanged:

* ``features``: 13 conv3×3 (padding 1) + ReLU layers and 5 max-pools (2×2, stride 2), at torchvision's
  indices (convolutions at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28);
* ``avgpool``: ``AdaptiveAvgPool2d((7, 7))`` (the identity at 224 px), so any input of at least 32 px works;
* ``classifier``: only index 0 (``Linear(25088, 4096)``) and 1 (``ReLU``): torchvision's ``classifier[0:2]``.

The pretrained weights are torchvision's ``VGG16_Weights.IMAGENET1K_V1``, published at
:data:`VGG16_WEIGHTS_URL`; as torch.hub does, the file name's suffix ``397923af`` is checked as the prefix of
the file's SHA-256. :func:`fetch_vgg16_weights` takes them from a file the user names, else from the cache
(``$LOOKALIKE_CACHE/weights/vgg16-397923af.pth``), else downloads them (``$LOOKALIKE_WEIGHTS_MIRROR``
replaces the base URL, e.g. for a local mirror), and returns only the tensors :class:`VGG16Fc1` holds
(:func:`vgg16_fc1_state_dict`). A ``.pth`` file is read with ``torch.load(weights_only=True)``, never
unpickled freely.

Note for anyone comparing with the seed: Keras' VGG16 weights and preprocessing (BGR, mean subtraction in
0–255, no scaling) differ from torchvision's, and Keras flattens the pooled map channels-last, so the same
image does not give the same ``fc1`` vector in both; the architecture and the cut point are the same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lookalike._download import Progress
from lookalike.config import Preprocessing
from lookalike.errors import LookalikeError

from .weights import WEIGHTS_MIRROR_ENV, ensure_weights_file, load_weights_file, weights_cache_dir, weights_url

__all__ = [
    "VGG16Fc1",
    "VGG16_CONFIG",
    "VGG16_EMBEDDING_DIM",
    "VGG16_FC1_KEYS",
    "VGG16_IMAGENET_MEAN",
    "VGG16_IMAGENET_STD",
    "VGG16_IMAGE_SIZE",
    "VGG16_MIN_SIZE",
    "VGG16_PREPROCESSING",
    "VGG16_WEIGHTS_BASE_URL",
    "VGG16_WEIGHTS_FILENAME",
    "VGG16_WEIGHTS_PROVENANCE",
    "VGG16_WEIGHTS_SHA256_PREFIX",
    "VGG16_WEIGHTS_URL",
    "WEIGHTS_MIRROR_ENV",
    "ensure_weights_file",
    "fetch_vgg16_weights",
    "load_weights_file",
    "vgg16_fc1_shapes",
    "vgg16_fc1_state_dict",
    "weights_cache_dir",
    "weights_url",
]

logger = logging.getLogger(__name__)


VGG16_CONFIG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
"""Configuration "D" of the VGG paper: output channels of each conv3×3, ``"M"`` for a 2×2 max-pool."""

VGG16_EMBEDDING_DIM = 4096
"""Width of ``fc1``, the feature vector."""

VGG16_MIN_SIZE = 32
"""The smallest input side: five 2×2 pools take 32 px down to 1."""

VGG16_WEIGHTS_BASE_URL = "https://download.pytorch.org/models/"
VGG16_WEIGHTS_FILENAME = "vgg16-397923af.pth"
VGG16_WEIGHTS_URL = VGG16_WEIGHTS_BASE_URL + VGG16_WEIGHTS_FILENAME
"""torchvision's ``VGG16_Weights.IMAGENET1K_V1`` (527.8 MB, a zip-format ``torch.save`` of a plain state dict)."""

VGG16_WEIGHTS_SHA256_PREFIX = "397923af"
"""The published hash: the start of the file's SHA-256, as in its name (torch.hub's ``check_hash``)."""

VGG16_IMAGENET_MEAN = (0.485, 0.456, 0.406)
VGG16_IMAGENET_STD = (0.229, 0.224, 0.225)
VGG16_IMAGE_SIZE = 224

VGG16_PREPROCESSING = Preprocessing(
    image_size=VGG16_IMAGE_SIZE,
    channels=3,
    resize="squash",  # seed 002: img.resize((224, 224)); torchvision's own eval transform resizes to 256, crops 224
    interpolation="bicubic",  # Pillow's default filter in the seed's img.resize; torchvision's transform is bilinear
    mean=VGG16_IMAGENET_MEAN,
    std=VGG16_IMAGENET_STD,
)
"""RGB scaled to [0, 1], normalised with ImageNet's mean and std (torchvision's), 224 px."""

VGG16_WEIGHTS_PROVENANCE = (
    "torchvision VGG16_Weights.IMAGENET1K_V1 (" + VGG16_WEIGHTS_URL + "): VGG16 (Simonyan & Zisserman, "
    "arXiv:1409.1556, configuration D) trained from scratch on ImageNet-1k by the torchvision team with a "
    "simplified recipe (acc@1 71.592, acc@5 90.382); distributed with torchvision under the BSD-3-Clause "
    "licence; trained on ImageNet, whose terms of access limit its images to non-commercial research and "
    "education, so check the terms before commercial use"
)
"""Where the weights come from and under what terms, for a model's ``info``."""


def vgg16_fc1_shapes() -> dict[str, tuple[int, ...]]:
    """Return every state-dict key of :class:`VGG16Fc1` with its shape, in torchvision's order.

    Returns:
        ``{"features.0.weight": (64, 3, 3, 3), "features.0.bias": (64,), …, "classifier.0.bias": (4096,)}``.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    index, channels = 0, 3
    for item in VGG16_CONFIG:
        if item == "M":
            index += 1
            continue
        width = int(item)
        shapes[f"features.{index}.weight"] = (width, channels, 3, 3)
        shapes[f"features.{index}.bias"] = (width,)
        index += 2  # the convolution and its ReLU
        channels = width
    shapes["classifier.0.weight"] = (VGG16_EMBEDDING_DIM, channels * 7 * 7)
    shapes["classifier.0.bias"] = (VGG16_EMBEDDING_DIM,)
    return shapes


VGG16_FC1_KEYS: tuple[str, ...] = tuple(vgg16_fc1_shapes())
"""The 28 state-dict keys :class:`VGG16Fc1` holds (26 in ``features``, 2 in ``classifier``)."""


class VGG16Fc1(nn.Module):
    """VGG16's convolutional part, average pool and first fully connected layer with its ReLU.

    Module names and indices are torchvision's, so a (filtered) torchvision ``vgg16`` state dict loads
    with ``load_state_dict``. ``forward`` and ``encode`` both return the ``(n, 4096)`` ``fc1`` activations,
    which are non-negative.

    Attributes:
        embedding_dim: 4096.
        features: The 13 conv + ReLU layers and 5 max-pools (``nn.Sequential`` of 31 modules).
        avgpool: ``AdaptiveAvgPool2d((7, 7))``.
        classifier: ``Linear(25088, 4096)`` and ``ReLU``.
    """

    embedding_dim: int = VGG16_EMBEDDING_DIM

    def __init__(self, *, device: torch.device | str | None = None, init_weights: bool = True) -> None:
        """Build the network.

        Args:
            device: Where the parameters live; ``"meta"`` builds the structure without allocating (about
                470 MB in float32 otherwise).
            init_weights: Initialise as torchvision does (Kaiming-normal convolutions, N(0, 0.01) linear
                layer, zero biases); ``False`` leaves the memory uninitialised, for loading weights next.
        """
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        with torch.device("meta"):  # materialised below: no time spent on initialisations overwritten anyway
            for item in VGG16_CONFIG:
                if item == "M":
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                else:
                    layers.append(nn.Conv2d(channels, int(item), kernel_size=3, padding=1))
                    layers.append(nn.ReLU(inplace=True))
                    channels = int(item)
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(nn.Linear(channels * 7 * 7, VGG16_EMBEDDING_DIM), nn.ReLU(inplace=True))
        target = torch.device(device) if device is not None else torch.get_default_device()
        if target.type != "meta":
            self.to_empty(device=target)
            if init_weights:
                self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise the weights as torchvision's ``VGG`` does."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor], *, device: torch.device | str | None = None) -> VGG16Fc1:
        """Build the network around the tensors of a state dict without allocating it twice.

        Args:
            state: A torchvision ``vgg16`` state dict, full or already filtered by :func:`vgg16_fc1_state_dict`.
            device: Where to put the tensors; ``None`` keeps them where they are.

        Returns:
            The network, in eval mode.

        Raises:
            LookalikeError: If a needed key is missing or has the wrong shape.
        """
        weights = vgg16_fc1_state_dict(state)
        if device is not None:
            weights = {key: value.to(device) for key, value in weights.items()}
        network = cls(device="meta")
        network.load_state_dict(weights, assign=True)
        return network.eval()

    @classmethod
    def pretrained(cls, weights: str | os.PathLike[str] | None = None, **fetch: Any) -> VGG16Fc1:
        """Build the network with torchvision's ImageNet weights (see :func:`fetch_vgg16_weights`).

        Args:
            weights: A weights file (``.pth`` or ``.safetensors``); ``None`` uses the cache or downloads.
            **fetch: ``download``, ``cache_dir``, ``timeout``, ``progress`` for :func:`fetch_vgg16_weights`.

        Returns:
            The network, in eval mode, on the CPU.

        Raises:
            LookalikeError: As :func:`fetch_vgg16_weights`.
        """
        return cls.from_state_dict(fetch_vgg16_weights(weights, **fetch))

    def encode(self, x: Tensor) -> Tensor:
        """Return the ``fc1`` features of a batch.

        Args:
            x: ``(n, 3, h, w)`` normalised RGB, ``h`` and ``w`` at least 32.

        Returns:
            ``(n, 4096)`` activations after ``fc1``'s ReLU.

        Raises:
            ValueError: If ``x`` is not a batch of 3-channel images of at least 32×32 pixels.
        """
        if not torch.jit.is_tracing() and (
            x.dim() != 4 or x.shape[1] != 3 or min(x.shape[2], x.shape[3]) < VGG16_MIN_SIZE
        ):
            raise ValueError(
                f"VGG16 needs (n, 3, h, w) images of at least {VGG16_MIN_SIZE}×{VGG16_MIN_SIZE} px, "
                f"got shape {tuple(x.shape)}"
            )
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`encode`."""
        return self.encode(x)


def vgg16_fc1_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keep the tensors of a torchvision ``vgg16`` state dict that :class:`VGG16Fc1` holds.

    ``classifier.3`` and ``classifier.6`` (fc2 and the 1000-class layer) and anything else are dropped.

    Args:
        state: A state dict of torchvision's ``vgg16()`` (e.g. ``vgg16-397923af.pth``) or of :class:`VGG16Fc1`.

    Returns:
        The 28 tensors, in :data:`VGG16_FC1_KEYS` order (the same tensor objects, not copies).

    Raises:
        LookalikeError: If a needed key is missing, is not a tensor, or has the wrong shape (naming the key).
    """
    out: dict[str, Tensor] = {}
    for key, shape in vgg16_fc1_shapes().items():
        if key not in state:
            raise LookalikeError(f"not a torchvision VGG16 state dict: {key!r} is missing")
        value = state[key]
        if not isinstance(value, Tensor):
            raise LookalikeError(
                f"not a torchvision VGG16 state dict: {key!r} is a {type(value).__name__}, not a tensor"
            )
        if tuple(value.shape) != shape:
            raise LookalikeError(
                f"not a torchvision VGG16 state dict: {key!r} has shape {tuple(value.shape)}, expected {shape}"
            )
        out[key] = value
    dropped = sorted(set(state) - set(out))
    if dropped:
        logger.debug("dropping %d tensors VGG16Fc1 does not use: %s", len(dropped), ", ".join(dropped))
    return out


def fetch_vgg16_weights(
    weights: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    cache_dir: Path | None = None,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """Return torchvision's ImageNet VGG16 weights for :class:`VGG16Fc1`.

    In order: the file ``weights`` if given (checked only for its keys and shapes, not its hash); else the
    cached ``<cache>/weights/vgg16-397923af.pth`` if its SHA-256 starts with ``397923af``; else (if
    ``download``) the file downloaded from :data:`VGG16_WEIGHTS_URL` (or ``$LOOKALIKE_WEIGHTS_MIRROR``)
    into the cache, checked before it is kept.

    Args:
        weights: A ``.safetensors`` file, or a ``torch.save`` file (``.pth``) read with ``weights_only=True``.
        download: Whether the weights may be downloaded when not cached.
        cache_dir: The cache directory; defaults to :func:`lookalike.datasets.default_cache_dir`
            (``$LOOKALIKE_CACHE``, else ``~/.cache/lookalike``). The file goes in its ``weights`` folder.
        timeout: Seconds to wait for the server to connect or to send more data.
        progress: Called as ``progress(bytes_done, bytes_total_or_None)`` while downloading.

    Returns:
        The 28 tensors of :class:`VGG16Fc1` (on the CPU), from :func:`vgg16_fc1_state_dict`.

    Raises:
        LookalikeError: One line naming the file or URL and the reason: a missing or unreadable file, a
            download that fails or does not match the published hash, weights not cached with
            ``download=False``, or a state dict that is not VGG16's.
    """
    if weights is not None:
        path = Path(weights).expanduser()
    else:
        path = ensure_weights_file(
            VGG16_WEIGHTS_FILENAME,
            VGG16_WEIGHTS_SHA256_PREFIX,
            base_url=VGG16_WEIGHTS_BASE_URL,
            what="VGG16 ImageNet weights",
            cache_dir=cache_dir,
            download=download,
            timeout=timeout,
            progress=progress,
        )
    state = load_weights_file(path)
    try:
        return vgg16_fc1_state_dict(state)
    except LookalikeError as exc:
        raise LookalikeError(f"{path}: {exc}") from exc
