"""Invariance losses: make two random views of the same image embed alike (self-supervised, no labels).

Reconstruction alone teaches an autoencoder to keep what pixels need (colour layout, brightness), which
is why the seeds' autoencoders retrieve no better than raw pixels. Adding one of these losses on the
projector's outputs of two augmented views makes the embedding keep what survives cropping, flipping and
colour changes: the object, its shape and texture.

* ``simclr``: the normalised-temperature cross-entropy of SimCLR (Chen et al., 2020): each view must pick
  its partner out of the ``2n - 1`` other views in the batch.
* ``vicreg``: variance-invariance-covariance regularisation (Bardes et al., 2022): mean squared distance
  between partners, a hinge keeping every dimension's standard deviation up, and a penalty on
  off-diagonal covariance (decorrelation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OBJECTIVES = ("none", "simclr", "vicreg")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's loss for two batches of projections ``(n, d)``, row ``i`` of each from the same image."""
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # a view is not its own partner
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def vicreg(z1: torch.Tensor, z2: torch.Tensor, sim: float = 25.0, var: float = 25.0, cov: float = 1.0) -> torch.Tensor:
    """VICReg's loss with the paper's weights (25, 25, 1)."""
    z1, z2 = z1.float(), z2.float()
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    variance = z1.new_zeros(())
    covariance = z1.new_zeros(())
    for z in (z1, z2):
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.var(dim=0) + 1e-4)
        variance = variance + F.relu(1 - std).mean() / 2
        c = (z.T @ z) / max(1, n - 1)
        off = c - torch.diag(torch.diag(c))
        covariance = covariance + off.pow(2).sum() / d / 2
    return sim * invariance + var * variance + cov * covariance


def invariance_loss(kind: str, z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """The loss named ``kind`` (``simclr`` or ``vicreg``) between two batches of projections."""
    if kind == "simclr":
        return nt_xent(z1, z2, temperature)
    if kind == "vicreg":
        return vicreg(z1, z2)
    raise ValueError(f"unknown objective {kind!r} (use one of {', '.join(OBJECTIVES)})")
