"""Convolutional autoencoders: the seeds' four networks and lookalike's own default.

Every network exposes ``encode(x) -> (n, d)`` (the embedding used for search), ``decode(z)`` (an image in
the model's input space, for reconstruction grids) and ``forward(x) -> (reconstruction, embedding)``.
Networks are built by name from plain keyword arguments, so ``config.json`` can rebuild them exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ConvAutoencoder(nn.Module):
    """Base class: an encoder producing a flat embedding and a decoder reconstructing the input."""

    #: "sigmoid" when ``decode`` returns images in [0, 1] (trained with BCE or MSE on [0, 1] pixels).
    output_activation: str | None = None

    def __init__(self, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.image_size = image_size

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Images ``(n, C, S, S)`` in model space -> embeddings ``(n, d)``."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Embeddings ``(n, d)`` -> reconstructed images ``(n, C, S, S)`` in model space."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z

    @property
    def embedding_dim(self) -> int:
        """Length of the vectors :meth:`encode` returns (probed once with a zero image, then cached)."""
        cached = self.__dict__.get("_embedding_dim")
        if cached is None:
            was_training = self.training
            self.eval()
            weight = next(self.parameters())
            probe = torch.zeros(1, self.in_channels, self.image_size, self.image_size, dtype=weight.dtype)
            with torch.no_grad():
                cached = int(self.encode(probe.to(weight.device)).shape[1])
            self.train(was_training)
            self.__dict__["_embedding_dim"] = cached
        return cached


def _check_divisible(image_size: int, factor: int, name: str) -> None:
    if image_size % factor:
        raise ValueError(f"the {name} network needs an image size divisible by {factor}, got {image_size}")


class CifarSeedAE(ConvAutoencoder):
    """Seed 001: six 3x3 convs (16/32/64, two with stride 2), Linear to a 1000-d ReLU bottleneck.

    The decoder mirrors it with transposed convolutions and ends without an activation; it is trained
    with MSE on images normalised to [-1, 1].
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, width: int = 16, latent_dim: int = 1000):
        super().__init__(in_channels, image_size)
        _check_divisible(image_size, 4, "cifar-seed")
        c, s = width, image_size // 4
        self.feature_shape = (4 * c, s, s)
        act = functools.partial(nn.ReLU, inplace=True)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1), act(),
            nn.Conv2d(c, c, 3, padding=1), act(),
            nn.Conv2d(c, 2 * c, 3, padding=1, stride=2), act(),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), act(),
            nn.Conv2d(2 * c, 4 * c, 3, padding=1, stride=2), act(),
            nn.Conv2d(4 * c, 4 * c, 3, padding=1), act(),
            nn.Flatten(),
            nn.Linear(4 * c * s * s, latent_dim), act(),
        )  # fmt: skip
        self.decoder_linear = nn.Sequential(nn.Linear(latent_dim, 4 * c * s * s), act())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4 * c, 4 * c, 3, padding=1), act(),
            nn.ConvTranspose2d(4 * c, 2 * c, 3, padding=1, stride=2, output_padding=1), act(),
            nn.ConvTranspose2d(2 * c, 2 * c, 3, padding=1), act(),
            nn.ConvTranspose2d(2 * c, c, 3, padding=1, stride=2, output_padding=1), act(),
            nn.ConvTranspose2d(c, c, 3, padding=1), act(),
            nn.ConvTranspose2d(c, in_channels, 3, padding=1),
        )  # fmt: skip

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.decoder_linear(z).view(-1, *self.feature_shape))


class MnistSeedAE(ConvAutoencoder):
    """Seed 004: conv 32/16/8 each followed by 2x2 max-pooling ('same' padding) to 4x4x8 for 28 px.

    The decoder is conv 8 + upsample, conv 16 + upsample, conv 32 (unpadded at 28 px, as in the seed) +
    upsample, conv to the input channels with a sigmoid; trained with binary cross-entropy on [0, 1].
    The embedding is the flattened 4x4x8 code (128 values at 28 px).
    """

    output_activation = "sigmoid"

    def __init__(self, in_channels: int = 1, image_size: int = 28):
        super().__init__(in_channels, image_size)
        act = functools.partial(nn.ReLU, inplace=True)
        pool = lambda: nn.MaxPool2d(2, ceil_mode=True)  # noqa: E731 - Keras padding='same' pooling
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), act(), pool(),
            nn.Conv2d(32, 16, 3, padding=1), act(), pool(),
            nn.Conv2d(16, 8, 3, padding=1), act(), pool(),
        )  # fmt: skip
        code = image_size
        for _ in range(3):
            code = -(-code // 2)
        self.code_shape = (8, code, code)
        seed_geometry = image_size == 28  # the seed's unpadded conv turns 16 into 14, then 28
        self.decoder = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), act(), nn.Upsample(scale_factor=2),
            nn.Conv2d(8, 16, 3, padding=1), act(), nn.Upsample(scale_factor=2),
            nn.Conv2d(16, 32, 3, padding=0 if seed_geometry else 1), act(), nn.Upsample(scale_factor=2),
            nn.Conv2d(32, in_channels, 3, padding=1),
        )  # fmt: skip

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        y = self.decoder(z.view(-1, *self.code_shape))
        if y.shape[-1] != self.image_size:
            y = F.interpolate(y, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return torch.sigmoid(y)


class FolderSeedAE(ConvAutoencoder):
    """Seed 003: five conv(3x3)+ReLU+maxpool(2) stages 16/32/64/128/256 -> 256 x S/32 x S/32.

    The decoder is five 2x2 stride-2 transposed convs with ReLU (the last one too, as in the seed);
    trained with MSE on [0, 1] pixels. The embedding is the flattened feature map (65,536 values at
    the seed's 512 px).
    """

    def __init__(self, in_channels: int = 3, image_size: int = 512):
        super().__init__(in_channels, image_size)
        _check_divisible(image_size, 32, "folder-seed")
        widths = [in_channels, 16, 32, 64, 128, 256]
        enc: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            enc += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        rev = widths[::-1]
        for a, b in zip(rev[:-1], rev[1:]):
            dec += [nn.ConvTranspose2d(a, b, 2, stride=2), nn.ReLU(inplace=True)]
        self.decoder = nn.Sequential(*dec)
        s = image_size // 32
        self.code_shape = (256, s, s)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z.view(-1, *self.code_shape))


class DenseLatentAE(ConvAutoencoder):
    """Seed 002: conv 32/64/64 (3x3, stride 1) each followed by LeakyReLU then BatchNorm, a Dense latent.

    The decoder is Dense -> reshape -> transposed convs 64/64/32 (LeakyReLU, BatchNorm) -> 3 channels
    with a sigmoid; trained with MSE on [0, 1] pixels at 256 px. The seed's code wires its third conv to
    the input by mistake, leaving the first two unused; here the three convs are chained as intended.
    Note the size: the Dense layers hold ``2 x S*S*64 x latent`` weights (134 M at 256 px, latent 16).
    """

    output_activation = "sigmoid"

    def __init__(self, in_channels: int = 3, image_size: int = 256, latent_dim: int = 16):
        super().__init__(in_channels, image_size)

        def block(conv: nn.Module, ch: int) -> list[nn.Module]:
            return [conv, nn.LeakyReLU(0.3), nn.BatchNorm2d(ch)]  # Keras LeakyReLU's default slope is 0.3

        self.encoder = nn.Sequential(
            *block(nn.Conv2d(in_channels, 32, 3, padding=1), 32),
            *block(nn.Conv2d(32, 64, 3, padding=1), 64),
            *block(nn.Conv2d(64, 64, 3, padding=1), 64),
            nn.Flatten(),
            nn.Linear(64 * image_size * image_size, latent_dim),
        )
        self.decoder_linear = nn.Linear(latent_dim, 64 * image_size * image_size)
        self.decoder = nn.Sequential(
            *block(nn.ConvTranspose2d(64, 64, 3, padding=1), 64),
            *block(nn.ConvTranspose2d(64, 64, 3, padding=1), 64),
            *block(nn.ConvTranspose2d(64, 32, 3, padding=1), 32),
            nn.ConvTranspose2d(32, in_channels, 3, padding=1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        y = self.decoder_linear(z).view(-1, 64, self.image_size, self.image_size)
        return torch.sigmoid(self.decoder(y))


class _ResBlock(nn.Module):
    """Pre-activation-free basic residual block: conv-BN-ReLU-conv-BN + identity, then ReLU."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def _down(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True))


def _up(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
    )  # fmt: skip


class ResidualAE(ConvAutoencoder):
    """lookalike's default: a small residual conv encoder with BatchNorm and a linear bottleneck.

    Encoder: a full-resolution stem conv, then two stride-2 stages each followed by a residual block,
    and a last stride-2 conv to ``S/8``; a Linear layer maps the flattened map to the embedding. The
    decoder mirrors it with nearest upsampling + conv. Trained as a denoising autoencoder (see the
    ``default`` preset); light enough to train at several hundred images per second on a laptop CPU.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        widths: tuple[int, int, int] | list[int] = (24, 48, 96),
        latent_dim: int = 256,
    ):
        super().__init__(in_channels, image_size)
        _check_divisible(image_size, 8, "default")
        w1, w2, w3 = widths
        s = image_size // 8
        self.code_shape = (w3, s, s)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True),
            _down(w1, w2), _ResBlock(w2), _down(w2, w3), _ResBlock(w3), _down(w3, w3),
        )  # fmt: skip
        self.to_latent = nn.Linear(w3 * s * s, latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, w3 * s * s), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            _up(w3, w3), _up(w3, w2), _up(w2, w1), nn.Conv2d(w1, in_channels, 3, padding=1),
        )  # fmt: skip

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(z).view(-1, *self.code_shape))


class InvariantAE(ConvAutoencoder):
    """lookalike's default: a residual conv encoder whose globally pooled features are the embedding,
    trained to reconstruct images *and* to give two random views of one image the same embedding.

    Encoder: a stem conv at full resolution, then stages that halve the resolution (stride-2 conv +
    BatchNorm + ReLU) each followed by a residual block, down to ``S/2^stages``; global average pooling
    gives the embedding (``widths[-1]`` values, or ``embedding_dim``), so the embedding does not depend
    on where in the picture something is. Decoder: a Linear layer back to that map, then nearest upsampling + conv
    stages to the image. Projector: a small MLP on the embedding used only by the invariance loss
    during training (as in SimCLR/VICReg, the features *before* it retrieve best); ``project`` exposes it.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        widths: tuple[int, ...] | list[int] = (32, 64, 128, 256),
        projector: tuple[int, ...] | list[int] = (512, 128),
        embedding_dim: int | None = None,
    ):
        super().__init__(in_channels, image_size)
        if len(widths) < 2:
            raise ValueError("the invariant autoencoder needs at least two widths (stem and one stage)")
        stages = len(widths) - 1
        _check_divisible(image_size, 2**stages, "invariant")
        s = image_size // 2**stages
        w = list(widths)
        if embedding_dim is not None:  # --latent-dim: the last stage's width is the embedding size
            w[-1] = int(embedding_dim)
        self.code_shape = (w[-1], s, s)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, w[0], 3, padding=1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True),
        ]  # fmt: skip
        for a, b in zip(w[:-1], w[1:]):
            layers += [_down(a, b), _ResBlock(b)]
        self.encoder = nn.Sequential(*layers)
        dim = w[-1]
        self.from_latent = nn.Sequential(nn.Linear(dim, dim * s * s), nn.ReLU(inplace=True))
        ups: list[nn.Module] = [_up(b, a) for a, b in zip(w[:-1], w[1:])][::-1]
        self.decoder = nn.Sequential(*ups, nn.Conv2d(w[0], in_channels, 3, padding=1))
        head: list[nn.Module] = []
        for i, out in enumerate(projector):
            head.append(nn.Linear(dim, out, bias=i == len(projector) - 1))
            if i < len(projector) - 1:
                head += [nn.BatchNorm1d(out), nn.ReLU(inplace=True)]
            dim = out
        self.projector = nn.Sequential(*head)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).mean(dim=(2, 3))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(z).view(-1, *self.code_shape))

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Embedding -> the projector's output, where the invariance loss is computed."""
        return self.projector(z)


ARCHITECTURES: dict[str, Callable[..., ConvAutoencoder]] = {
    "cifar-seed": CifarSeedAE,
    "mnist-seed": MnistSeedAE,
    "folder-seed": FolderSeedAE,
    "dense-latent": DenseLatentAE,
    "residual": ResidualAE,
    "invariant": InvariantAE,
}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Build a network by architecture name with keyword arguments from a model's ``config.json``.

    ``"pretrained"`` is a pretrained backbone (:class:`~lookalike.models.pretrained.PretrainedNet`).
    """
    if name == "pretrained":
        from .pretrained import PretrainedNet

        return PretrainedNet(**kwargs)
    try:
        cls = ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted([*ARCHITECTURES, "pretrained"]))
        raise ValueError(f"unknown architecture {name!r} (known: {known})") from None
    return cls(**kwargs)


def init_weights(net: nn.Module, scheme: str) -> None:
    """Re-initialise weights: ``"xavier"`` is seed 001's xavier_uniform with biases 0.01."""
    if scheme == "default":
        return
    if scheme != "xavier":
        raise ValueError(f"unknown init scheme {scheme!r}")
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.01)
