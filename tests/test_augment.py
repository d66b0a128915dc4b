"""Batched training augmentations and invariance losses."""

from __future__ import annotations

import math

import pytest
import torch

from lookalike.augment import Augmentation, colour_jitter, crop_and_flip, random_view
from lookalike.objectives import invariance_loss, nt_xent, vicreg

NO_COLOUR = dict(jitter=0.0, grayscale=0.0)


def _gradient_images(n: int = 4, size: int = 16) -> torch.Tensor:
    ramp = torch.linspace(0, 1, size)
    img = torch.stack(
        [ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size), 0.5 * torch.ones(size, size)]
    )
    return img.expand(n, 3, size, size).clone()


def test_full_crop_without_flip_is_the_identity() -> None:
    x = torch.rand(3, 3, 12, 12)
    aug = Augmentation(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0, **NO_COLOUR)
    y = crop_and_flip(x, aug, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_flip_always_mirrors_the_image() -> None:
    x = torch.rand(2, 3, 10, 10)
    aug = Augmentation(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=1.0, **NO_COLOUR)
    y = crop_and_flip(x, aug, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, x.flip(-1), atol=1e-5, rtol=0)


def test_crops_zoom_in_and_views_can_be_smaller_than_the_images() -> None:
    x = _gradient_images(8, 32)
    aug = Augmentation(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), hflip=0.0, view_scale=0.5, **NO_COLOUR)
    y = crop_and_flip(x, aug, torch.Generator().manual_seed(1))
    assert y.shape == (8, 3, 16, 16)
    # A quarter of the area is half the side: the horizontal ramp spans about half of [0, 1].
    span = y[:, 0, 8, -1] - y[:, 0, 8, 0]
    assert torch.all((span > 0.4) & (span < 0.55)), span
    assert y[:, 0, 8, 0].std() > 0.05  # and crops sit at different places


def test_views_are_seeded_and_differ_between_draws() -> None:
    x = torch.rand(6, 3, 16, 16)
    aug = Augmentation()
    a = random_view(x, aug, torch.Generator().manual_seed(5))
    b = random_view(x, aug, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    c, d = random_view(x, aug, gen), random_view(x, aug, gen)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(c, d)
    assert a.min() >= 0 and a.max() <= 1


def test_colour_jitter_keeps_range_and_grey_means_equal_channels() -> None:
    x = torch.rand(64, 3, 8, 8)
    grey = colour_jitter(x, Augmentation(jitter=0.0, grayscale=1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(grey[:, 0], grey[:, 1])
    torch.testing.assert_close(grey[:, 1], grey[:, 2])
    jittered = colour_jitter(x, Augmentation(jitter=1.0, grayscale=0.0), torch.Generator().manual_seed(0))
    assert jittered.min() >= 0 and jittered.max() <= 1
    assert (jittered - x).abs().mean() > 0.02
    untouched = colour_jitter(x, Augmentation(jitter=0.0, grayscale=0.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(untouched, x, atol=1e-5, rtol=0)


def test_hue_rotation_changes_colour_but_keeps_luma() -> None:
    x = torch.rand(16, 3, 4, 4)
    only_hue = dict(brightness=0.0, contrast=0.0, saturation=0.0, grayscale=0.0, jitter=1.0)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    y = colour_jitter(x * 0.2 + 0.4, Augmentation(hue=0.5, **only_hue), torch.Generator().manual_seed(0))
    torch.testing.assert_close((y * luma).sum(1), ((x * 0.2 + 0.4) * luma).sum(1), atol=1e-4, rtol=0)
    assert (y - (x * 0.2 + 0.4)).abs().max() > 0.02  # (kept away from 0 and 1, so nothing is clipped)


def test_grey_images_get_grey_views() -> None:
    x = torch.rand(4, 1, 16, 16)
    y = random_view(x, Augmentation(view_scale=0.5), torch.Generator().manual_seed(0))
    assert y.shape == (4, 1, 8, 8)


def test_augmentation_round_trips_through_json_dicts() -> None:
    aug = Augmentation(crop_scale=(0.3, 0.9), view_scale=0.5, hue=0.0)
    assert Augmentation.from_dict(aug.to_dict()) == aug
    assert Augmentation.from_dict({"view_scale": 0.75, "unknown": 1}) == Augmentation(view_scale=0.75)


# --------------------------------------------------------------------------------------------- losses
def test_nt_xent_matches_its_definition() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    t = 0.3
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(10):
        partner = (i + 5) % 10
        denom = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(10) if j != i)
        total += -math.log(math.exp(float(z[i] @ z[partner]) / t) / denom)
    assert nt_xent(z1, z2, t).item() == pytest.approx(total / 10, rel=1e-5)


def test_invariance_losses_prefer_matching_views() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 16, generator=g)
    other = torch.randn(64, 16, generator=g)
    for kind in ("simclr", "vicreg"):
        assert invariance_loss(kind, z, z + 0.01 * other) < invariance_loss(kind, z, other)


def test_vicreg_penalises_collapse() -> None:
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(128, 8, generator=g)
    collapsed = torch.ones(128, 8) + 1e-3 * torch.randn(128, 8, generator=g)
    assert vicreg(collapsed, collapsed) > vicreg(spread, spread) + 10


def test_unknown_objective_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown objective"):
        invariance_loss("byol", torch.zeros(2, 2), torch.zeros(2, 2))
