"""Batched random augmentations for training, on tensors of pixels in [0, 1].

The whole batch is transformed at once with a handful of tensor operations (one ``grid_sample`` for
crop + flip, a few multiply-adds for colour), so augmenting costs little next to the network on a CPU
and runs on the GPU when training does. Every random draw comes from the caller's generator, so a
seeded run is reproducible.

The default strengths follow the SimCLR recipe for 32 px images (random resized crop of 20-100 % of the
area, horizontal flip, colour jitter 0.4/0.4/0.4/0.1 applied with probability 0.8, grayscale with
probability 0.2); a 1-channel model skips the colour steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """How strongly training views are distorted (used when a model learns invariance to them)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # area kept by the random resized crop, as a fraction
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crop
    hflip: float = 0.5  # probability of a horizontal flip
    jitter: float = 0.8  # probability that colour jitter is applied to an image
    brightness: float = 0.4  # brightness factor drawn from [1 - b, 1 + b]
    contrast: float = 0.4  # contrast factor drawn from [1 - c, 1 + c]
    saturation: float = 0.4  # saturation factor drawn from [1 - s, 1 + s]
    hue: float = 0.1  # hue rotation drawn from [-h, h] turns (a rotation of the YIQ chroma plane)
    grayscale: float = 0.2  # probability of turning an image grey
    view_scale: float = 1.0  # side of the views relative to the images' (0.5: 16 px views of 32 px images); smaller
    # views train about 1/scale^2 times faster, and the embedding of full-size images stays good (see BENCHMARKS.md)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        values = asdict(self)
        values["crop_scale"] = list(self.crop_scale)
        values["crop_ratio"] = list(self.crop_ratio)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Augmentation:
        """Build from :meth:`to_dict` output, ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        for key in ("crop_scale", "crop_ratio"):
            if key in kwargs:
                kwargs[key] = tuple(float(x) for x in kwargs[key])
        return cls(**kwargs)


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, generator=gen)).to(device)


def crop_and_flip(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """Random resized crops (scale and aspect ratio as in ``aug``), horizontally flipped at random,
    resampled bilinearly to ``aug.view_scale`` times the input size: one ``affine_grid`` + ``grid_sample``."""
    n = len(x)
    area = _uniform(n, *aug.crop_scale, gen, torch.device("cpu"))
    log_ratio = _uniform(n, math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1]), gen, torch.device("cpu"))
    ratio = torch.exp(log_ratio)
    # Width and height of the crop as fractions of the image side, clipped to the image.
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)  # centre, in [-1, 1] grid units
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=gen) < aug.hflip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    side = max(1, round(x.shape[-1] * aug.view_scale))
    grid = F.affine_grid(theta.to(x), [n, x.shape[1], side, side], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_LUMA = _RGB2YIQ[0]


def colour_jitter(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter (each image with probability ``aug.jitter``),
    then grayscale with probability ``aug.grayscale``; RGB batches only, values stay in [0, 1]."""
    n, dev = len(x), x.device
    on = (torch.rand(n, generator=gen) < aug.jitter).to(dev).view(n, 1, 1, 1)

    def factor(strength: float) -> torch.Tensor:
        f = _uniform(n, max(0.0, 1 - strength), 1 + strength, gen, dev).view(n, 1, 1, 1)
        return torch.where(on, f, torch.ones_like(f))

    y = x * factor(aug.brightness)
    grey = torch.einsum("c,nchw->nhw", _LUMA.to(y), y).unsqueeze(1)
    y = (y - grey.mean(dim=(2, 3), keepdim=True)) * factor(aug.contrast) + grey.mean(dim=(2, 3), keepdim=True)
    grey = torch.einsum("c,nchw->nhw", _LUMA.to(y), y).unsqueeze(1)
    y = (y - grey) * factor(aug.saturation) + grey
    if aug.hue > 0:
        angle = _uniform(n, -aug.hue, aug.hue, gen, dev) * (2 * math.pi) * on.view(n).to(y.dtype)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(n, 3, 3, dtype=y.dtype, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        rgb2yiq = _RGB2YIQ.to(y)
        mix = torch.linalg.inv(rgb2yiq) @ rot @ rgb2yiq  # (n, 3, 3): RGB -> rotated RGB
        y = torch.einsum("nij,njhw->nihw", mix, y)
    y = y.clamp(0, 1)
    to_grey = (torch.rand(n, generator=gen) < aug.grayscale).to(dev).view(n, 1, 1, 1)
    grey = torch.einsum("c,nchw->nhw", _LUMA.to(y), y).unsqueeze(1).expand_as(y)
    return torch.where(to_grey, grey, y)


def random_view(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """One random view of each image of a float batch ``(n, C, H, W)`` in [0, 1]."""
    y = crop_and_flip(x, aug, gen)
    if x.shape[1] == 3:
        y = colour_jitter(y, aug, gen)
    return y
