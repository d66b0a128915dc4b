"""Named starting points: the seeds' models, reproduced, and lookalike's own default.

A preset fixes an architecture, the preprocessing its training images get, and how it trains. Command
line options (``--image-size``, ``--latent-dim``, ``--epochs``, ...) override single fields.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..config import Preprocessing, TrainConfig


@dataclass(frozen=True)
class Preset:
    """An architecture + preprocessing + training recipe, with where it comes from."""

    name: str
    architecture: str  # key of lookalike.models.autoencoders.ARCHITECTURES
    arch_kwargs: dict[str, Any]  # keyword arguments besides in_channels and image_size
    preprocessing: Preprocessing
    train: TrainConfig
    summary: str  # one line for --help and the README
    provenance: str  # what was taken from the seed and what was changed
    latent_arg: str | None = "latent_dim"  # the arch keyword that --latent-dim sets, None if fixed
    size_multiple: int = 1  # image sizes must be multiples of this


_ZERO_ONE = {"mean": (0.0,), "std": (1.0,)}  # pixels scaled to [0, 1], no centring

PRESETS: dict[str, Preset] = {
    "default": Preset(
        name="default",
        architecture="invariant",
        arch_kwargs={"widths": [32, 64, 128], "projector": [512, 128]},
        preprocessing=Preprocessing(image_size=32),
        train=TrainConfig(
            epochs=30,
            batch_size=256,
            lr=2e-3,
            weight_decay=5e-4,
            optimizer="adamw",
            schedule="cosine",
            warmup_epochs=1.0,
            objective="simclr",
            temperature=0.2,
            recon_weight=1.0,
            recon_batch=16,
            augmentation={"view_scale": 0.5},
            amp="auto",
        ),
        summary=(
            "lookalike's residual conv autoencoder, 128-d pooled embedding; learns from reconstruction "
            "plus agreement between two random views of each image (SimCLR loss)"
        ),
        provenance=(
            "lookalike's own design: SimCLR's loss and augmentations (Chen et al., 2020) on half-size views, "
            "beside denoising reconstruction of whole images; measured in BENCHMARKS.md."
        ),
        latent_arg="embedding_dim",
        size_multiple=4,
    ),
    "denoising": Preset(
        name="denoising",
        architecture="residual",
        arch_kwargs={"widths": [24, 48, 96], "latent_dim": 256},
        preprocessing=Preprocessing(image_size=32),
        train=TrainConfig(
            epochs=15,
            batch_size=128,
            lr=2e-3,
            weight_decay=1e-4,
            optimizer="adamw",
            schedule="cosine",
            warmup_epochs=1.0,
            noise_std=0.2,
            hflip=True,
        ),
        summary="residual conv denoising autoencoder (BatchNorm, cosine schedule), Linear 256-d bottleneck",
        provenance="lookalike 0.1's default: reconstruction only (kept to measure what the invariance loss adds).",
        size_multiple=8,
    ),
    "cifar-seed": Preset(
        name="cifar-seed",
        architecture="cifar-seed",
        arch_kwargs={"width": 16, "latent_dim": 1000},
        preprocessing=Preprocessing(image_size=32),
        train=TrainConfig(epochs=15, batch_size=64, lr=1e-3, optimizer="adam", loss="mse", init="xavier"),
        summary="seed 001: six 3x3 convs 16/32/64 (two stride 2), Linear to a 1000-d ReLU bottleneck, MSE",
        provenance=(
            "Seed 001 ('Autoencoders and Visual Similarity', CIFAR-10): same layers, Normalize(0.5, 0.5), "
            "xavier-uniform init with 0.01 biases, Adam 1e-3, batch 64, 15 epochs, MSE."
        ),
        size_multiple=4,
    ),
    "mnist-seed": Preset(
        name="mnist-seed",
        architecture="mnist-seed",
        arch_kwargs={},
        preprocessing=Preprocessing(image_size=28, channels=1, **_ZERO_ONE),
        train=TrainConfig(epochs=10, batch_size=128, lr=1e-3, optimizer="adam", loss="bce"),
        summary="seed 004: conv 32/16/8 + max-pool encoder to 4x4x8, upsampling decoder, sigmoid + BCE",
        provenance=(
            "Seed 004 ('Similar Image Search with AutoEncoder', MNIST): same layers at 28 px greyscale, "
            "pixels / 255, Adam (Keras default 1e-3), batch 128, 10 epochs, binary cross-entropy."
        ),
        latent_arg=None,
    ),
    "dense-latent": Preset(
        name="dense-latent",
        architecture="dense-latent",
        arch_kwargs={"latent_dim": 16},
        preprocessing=Preprocessing(image_size=256, **_ZERO_ONE),
        train=TrainConfig(epochs=10, batch_size=16, lr=1e-3, optimizer="adam", loss="mse"),
        summary="seed 002: conv 32/64/64 + LeakyReLU + BatchNorm, Dense latent 16 at 256 px, sigmoid + MSE",
        provenance=(
            "Seed 002 ('Two different image search engines', product photos): same layers at 256 px, "
            "rescale 1/255, Adam 1e-3, batch 16, MSE; the seed's third conv was wired to the input by "
            "mistake, here the three convs are chained. The article gives no epoch count; 10 is ours."
        ),
    ),
    "folder-seed": Preset(
        name="folder-seed",
        architecture="folder-seed",
        arch_kwargs={},
        preprocessing=Preprocessing(image_size=512, **_ZERO_ONE),
        train=TrainConfig(epochs=10, batch_size=32, lr=1e-3, optimizer="adam", loss="mse"),
        summary="seed 003: conv+ReLU+maxpool x5 (16..256) to 256x16x16 at 512 px, 2x2 transposed convs, MSE",
        provenance=(
            "Seed 003 ('Image Similarity Search in PyTorch', a folder of images): same layers, an encoder "
            "output of 256x16x16 (so 512 px input), pixels in [0, 1], MSE, Adam 1e-3. The article gives no "
            "batch size or epoch count; 32 and 10 are ours."
        ),
        latent_arg=None,
        size_multiple=32,
    ),
}


def get_preset(name: str) -> Preset:
    """Look a preset up by name, with the known names in the error."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None


def resolve_preset(
    name: str,
    *,
    image_size: int | None = None,
    latent_dim: int | None = None,
    channels: int | None = None,
    arch_overrides: dict[str, Any] | None = None,
    **train_overrides: Any,
) -> tuple[str, dict[str, Any], Preprocessing, TrainConfig]:
    """A preset with user overrides applied: (architecture, arch kwargs, preprocessing, train config).

    ``arch_overrides`` update the network's keyword arguments; ``train_overrides`` replace
    :class:`TrainConfig` fields, except ``augmentation``, whose dict is merged into the preset's.

    Raises:
        ValueError: an override the preset cannot take (a latent size for a preset whose embedding is
            its feature map, an image size that is not a multiple the network needs).
    """
    preset = get_preset(name)
    prep = preset.preprocessing
    if image_size is not None:
        if image_size % preset.size_multiple:
            raise ValueError(
                f"preset {name!r} needs an image size that is a multiple of {preset.size_multiple}, got {image_size}"
            )
        prep = prep.replace(image_size=image_size)
    if channels is not None:
        prep = prep.replace(channels=channels)
    kwargs = {**preset.arch_kwargs, **(arch_overrides or {})}
    if latent_dim is not None:
        if preset.latent_arg is None:
            raise ValueError(f"preset {name!r} has no latent size to set: its embedding is the flattened feature map")
        kwargs[preset.latent_arg] = latent_dim
    changes = {k: v for k, v in train_overrides.items() if v is not None}
    if "augmentation" in changes:
        changes["augmentation"] = {**(preset.train.augmentation or {}), **changes["augmentation"]}
    train = replace(preset.train, **changes)
    return preset.architecture, kwargs, prep, train
