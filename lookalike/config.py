"""Dataclasses of defaults, one per component.

Every field carries a comment; these objects are what `config.json` of a model directory records, so a
query is always prepared exactly as the model's training images were.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

RESIZE_MODES = ("squash", "crop")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the tensor a model sees.

    The pipeline is: decode (EXIF orientation applied) -> convert to RGB or L -> resize to a square of
    ``image_size`` -> scale to [0, 1] -> ``(x - mean) / std`` per channel.
    """

    image_size: int = 32  # side of the square model input, in pixels
    channels: int = 3  # 3 = RGB, 1 = greyscale (L)
    resize: str = "squash"  # "squash": whole image to the square (the seeds' resize); "crop": shorter side, centre crop
    interpolation: str = "bilinear"  # Pillow resampling filter: nearest, bilinear, bicubic or lanczos
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # subtracted per channel after scaling to [0, 1]
    std: tuple[float, ...] = (0.5, 0.5, 0.5)  # divided per channel after subtracting the mean

    def __post_init__(self) -> None:
        if self.image_size < 4:
            raise ValueError(f"image_size must be at least 4 pixels, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        # Broadcast a single value, or a 3-channel value for a 1-channel model, to the channel count.
        object.__setattr__(self, "mean", _per_channel(self.mean, self.channels, "mean"))
        object.__setattr__(self, "std", _per_channel(self.std, self.channels, "std"))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    def replace(self, **changes: Any) -> Preprocessing:
        """Return a copy with some fields changed (mean/std are re-broadcast to the channel count)."""
        values = asdict(self)
        values.update(changes)
        if "channels" in changes and "mean" not in changes:
            values["mean"] = (self.mean[0],)
            values["std"] = (self.std[0],)
        return Preprocessing(**values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        values = asdict(self)
        values["mean"] = list(self.mean)
        values["std"] = list(self.std)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        """Build from :meth:`to_dict` output, ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(x) for x in kwargs[key])
        return cls(**kwargs)


def _per_channel(values: tuple[float, ...], channels: int, name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(values) == 1 or len(set(values)) == 1:
        return (values[0],) * channels
    raise ValueError(f"{name} has {len(values)} values for a {channels}-channel model")


@dataclass
class TrainConfig:
    """How an autoencoder is trained."""

    epochs: int = 15  # passes over the training images
    batch_size: int = 64  # images per optimiser step
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # decoupled weight decay (AdamW) or L2 (Adam)
    optimizer: str = "adam"  # "adam" or "adamw"
    schedule: str = "constant"  # "constant" or "cosine" (with linear warm-up)
    warmup_epochs: float = 0.0  # linear warm-up length for the cosine schedule, in epochs
    loss: str = "mse"  # reconstruction loss: "mse" on normalised pixels, or "bce" for sigmoid outputs
    init: str = "default"  # weight init: "default" (PyTorch's) or "xavier" (seed 001: xavier_uniform, bias 0.01)
    noise_std: float = 0.0  # std of Gaussian noise added to inputs (denoising autoencoder); 0 disables
    hflip: bool = False  # random horizontal flips of training images
    val_fraction: float = 0.1  # share of images held out for validation (at least one image when >0)
    seed: int = 0  # seeds the split, the initial weights and the batch order
    device: str = "auto"  # "auto" (cuda when present, else cpu), "cpu", "cuda" or "cuda:N"
    num_workers: int = 0  # DataLoader worker processes used to decode images before training
    recon_every_epoch: bool = True  # write a reconstruction grid after every epoch
    objective: str = "none"  # invariance loss beside reconstruction: "none", "simclr" or "vicreg" (objectives.py)
    invariance_weight: float = 1.0  # weight of the invariance loss
    recon_weight: float = 1.0  # weight of the reconstruction loss
    recon_batch: int = 64  # with an invariance objective: clean images per step reconstructed at full size
    temperature: float = 0.2  # softmax temperature of the simclr loss
    augmentation: dict[str, Any] | None = None  # view distortions for the invariance loss (augment.Augmentation
    # fields); None = that class's defaults
    amp: str = "off"  # mixed precision for training: "off", "bf16" (CPUs with native bfloat16, and GPUs), "auto"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output, ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
