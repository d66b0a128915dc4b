"""Adapt a pretrained extractor to the user's own, unlabelled images: a small head on its frozen features.

The backbone stays frozen (its features are computed once); only a head is learned, in seconds to a few
minutes on a CPU, and saved with the model like any other weights. Two methods:

- ``neighbours`` (default): a 2-layer MLP trained with a contrastive loss (NT-Xent) in which each image's
  positive is one of its ``neighbours`` nearest images in the frozen feature space (drawn anew every
  step), the rest of the batch the negatives, with dropout on the input features as the augmentation.
  Images that the backbone already places close together are pulled into tighter groups, away from the
  others; on CIFAR-10 this lifts Lite0's mAP@1000 by about 0.04 (BENCHMARKS.md).
- ``pca``: centring on the collection's mean and a PCA projection to ``dims`` (no whitening, which hurt
  retrieval here); fitted in seconds, a smaller gain.

The safeguard (``blend``, default 0.5, ``neighbours`` only): the embedding is the head's output beside the
frozen features' own top ``frozen_dims`` directions (:class:`~lookalike.models.pretrained.BlendHead`), so a
similarity is ``blend`` x the frozen one + (1 - ``blend``) x the head's. Measured on seven real labelled
folders at 128 px (the issue-14 notes; ``benchmarks/real_folders.py`` is the benchmark), the head alone
lost to its frozen backbone on precision@1 on most of them and on mAP@100 where neighbours in the frozen
space are often of another class (characters in street photos: 0.383 vs 0.415); blended, it came back to
0.411 there, kept the head's mAP@100 gains elsewhere (at least the head's on 6 of 7) and had a
precision@1 at least the head's on all 7, though still up to 0.03 below the frozen backbone's on two.

Both first L2-normalise the features, subtract the collection's mean and normalise again (the head holds
that mean), so they can be applied to any new image exactly as to the ones they were fitted on.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._callbacks import emit
from .errors import LookalikeError
from .models import Model
from .models.pretrained import PretrainedNet

logger = logging.getLogger(__name__)

METHODS = ("neighbours", "pca")
DEFAULT_METHOD = "neighbours"
DEFAULT_EPOCHS = 10
MAX_FIT_IMAGES = 100_000  # a larger collection is subsampled (seeded) for fitting: the k-NN graph is O(n^2)


def adapt(
    base: Model,
    features: np.ndarray | None = None,
    *,
    paths: Sequence[str | os.PathLike[str]] | None = None,
    method: str = DEFAULT_METHOD,
    dims: int = 128,
    hidden: int = 1024,
    neighbours: int = 5,
    temperature: float = 0.5,
    blend: float = 0.5,
    frozen_dims: int = 128,
    epochs: int | None = None,
    batch_size: int = 512,
    lr: float = 2e-3,
    seed: int = 0,
    callbacks: Sequence[Any] = (),
) -> Model:
    """A copy of the pretrained ``base`` with a head fitted on the user's images (labels are never used).

    Args:
        base: a pretrained extractor without a head (``Model.pretrained(...)``).
        features: its raw features of the user's images ``(n, D)``; computed from ``paths`` when None.
        paths: the images, when ``features`` is not given.
        method: ``neighbours`` (contrastive MLP, the default) or ``pca``.
        dims: length of the adapted embeddings.
        hidden: width of the MLP's hidden layer (``neighbours``).
        neighbours: how many nearest images each image may be paired with (``neighbours``).
        temperature: NT-Xent temperature (``neighbours``).
        blend: weight of the frozen similarity in the embedding's (``neighbours``; 0: the head alone).
        frozen_dims: frozen directions kept beside the head when blending (an SVD of the unit features).
        epochs: passes over the images (``neighbours``; default :data:`DEFAULT_EPOCHS`).
        batch_size: images per step (``neighbours``).
        lr: peak learning rate of the one-cycle schedule (``neighbours``).
        seed: seeds the subsample, the initialisation and the pairs.
        callbacks: objects with ``on_adapt(epoch, epochs, loss)``.

    Returns:
        A new :class:`Model` whose extractor is ``<backbone>+adapted`` (the backbone's weights are shared);
        its embeddings are ``dims`` long, ``frozen_dims + dims`` when blended.

    Raises:
        LookalikeError: ``base`` is not a plain pretrained extractor, too few images, or a bad option.
    """
    if not base.is_pretrained or base.arch_kwargs.get("head"):
        raise LookalikeError(f"{base.extractor}: only a pretrained extractor without a head can be adapted")
    if method not in METHODS:
        raise LookalikeError(f"unknown adaptation method {method!r} (one of {', '.join(METHODS)})")
    if not 0 <= blend < 1:
        raise LookalikeError(f"blend is the frozen similarity's weight, from 0 up to 1 (not included); got {blend}")
    if features is None:
        if paths is None:
            raise LookalikeError("adapt needs the images' features or their paths")
        from .embed import embed_files

        features = embed_files(base, list(paths), callbacks=callbacks).vectors
    x = np.asarray(features, dtype=np.float32)
    in_dim = base.network.spec.dim_for(base.preprocessing.image_size)
    if x.ndim != 2 or x.shape[1] != in_dim:
        raise LookalikeError(f"features have shape {x.shape}; {base.extractor} gives {in_dim}-d features")
    need = max(neighbours + 2, 2 * 8) if method == "neighbours" else 2
    if len(x) < need:
        raise LookalikeError(f"adapting needs at least {need} images, got {len(x)}")
    rng = np.random.default_rng(seed)
    if len(x) > MAX_FIT_IMAGES:
        x = x[np.sort(rng.choice(len(x), MAX_FIT_IMAGES, replace=False))]
    t0 = time.perf_counter()
    unit = _l2(x)
    mean = unit.mean(axis=0)
    centred = _l2(unit - mean)
    dims = min(dims, in_dim)
    if method == "pca":
        head_cfg = {"name": "adapted", "method": "pca", "kind": "linear", "dims": [dims], "center": True}
        state = {**_fit_pca(centred, dims), "1.mean": mean}
        info: dict[str, Any] = {}
    else:
        dims_list = [hidden, dims]
        head_cfg = {"name": "adapted", "method": "neighbours", "kind": "mlp", "dims": dims_list, "center": True}
        state, info = _fit_neighbours(
            centred, in_dim, dims_list, neighbours=neighbours, temperature=temperature,
            epochs=epochs or DEFAULT_EPOCHS, batch_size=batch_size, lr=lr, seed=seed, callbacks=callbacks,
        )  # fmt: skip
        state["1.mean"] = torch.from_numpy(mean)  # the head is [L2Normalize, Centre, L2Normalize, ...]
        if blend:
            keep = min(frozen_dims, in_dim, len(x))
            head_cfg.update(blend=float(blend), frozen_dims=keep)
            state = {f"learned.{k}": v for k, v in state.items()}
            state["frozen.weight"] = torch.from_numpy(_top_directions(unit, keep, rng))
            info = {**info, "blend": float(blend), "frozen_dims": keep}
    name = base.arch_kwargs["backbone"]
    net = PretrainedNet(name, image_size=base.preprocessing.image_size, head=head_cfg)
    net.backbone = base.network.backbone  # shared, frozen
    assert net.head is not None
    head_state = net.head.state_dict()
    head_state.update({k: torch.as_tensor(v) for k, v in state.items()})
    net.head.load_state_dict(head_state)
    net.eval()
    fitted = {"method": method, "images": len(x), "dims": dims, "seconds": round(time.perf_counter() - t0, 2), **info}
    return Model(
        net,
        base.preprocessing,
        architecture="pretrained",
        arch_kwargs={"backbone": name, "head": head_cfg},
        preset=base.preset,
        info={**base.info, "adaptation": fitted},
    )


FIT_SAMPLE = 20_000  # `index -e NAME+adapted` fits on at most this many images of the folder (seeded sample)


def sample_paths(paths: Sequence[Any], n: int = FIT_SAMPLE, seed: int = 0) -> list[Any]:
    """At most ``n`` of ``paths`` (a seeded sample, in their order): what a head is fitted on when indexing."""
    if len(paths) <= n:
        return list(paths)
    keep = np.sort(np.random.default_rng(seed).choice(len(paths), n, replace=False))
    return [paths[i] for i in keep.tolist()]


def _l2(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _top_directions(unit: np.ndarray, k: int, rng: np.random.Generator, sample: int = 20_000) -> np.ndarray:
    """The top ``k`` right singular vectors of the (uncentred) unit features, ``(k, D)`` float32: a projection
    that keeps their cosines (of at most ``sample`` rows, seeded)."""
    if len(unit) > sample:
        unit = unit[np.sort(rng.choice(len(unit), sample, replace=False))]
    return _top_eigenvectors(unit.astype(np.float64).T @ unit.astype(np.float64), k)


def _top_eigenvectors(matrix: np.ndarray, k: int) -> np.ndarray:
    """The eigenvectors of the ``k`` largest eigenvalues of a symmetric matrix, as rows ``(k, D)`` float32."""
    values, vectors = np.linalg.eigh(matrix)
    return np.ascontiguousarray(vectors[:, np.argsort(values)[::-1][:k]].T, dtype=np.float32)


def _fit_pca(centred: np.ndarray, dims: int) -> dict[str, np.ndarray]:
    """The top ``dims`` principal directions as the weight of the head's Linear layer (index 3)."""
    top = _top_eigenvectors(np.cov(centred.astype(np.float64), rowvar=False), dims)
    return {"3.weight": top, "3.bias": np.zeros(dims, dtype=np.float32)}


def knn_graph(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows by inner product (faiss, exact), ``(n, k)``."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(x, dtype=np.float32), k + 1)
    out = np.empty((len(x), k), dtype=np.int64)
    for i, row in enumerate(ids):  # drop the row itself wherever it landed (duplicates may tie with it)
        others = row[row != i]
        out[i] = others[:k] if len(others) >= k else np.resize(others, k)
    return out


def _fit_neighbours(
    x: np.ndarray,
    in_dim: int,
    dims: list[int],
    *,
    neighbours: int,
    temperature: float,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    callbacks: Sequence[Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the MLP head with nearest neighbours as positives; returns its state (module indices of the head)."""
    from .models.pretrained import build_head

    t0 = time.perf_counter()
    graph = torch.from_numpy(knn_graph(x, neighbours))
    knn_s = time.perf_counter() - t0
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    mlp = build_head({"kind": "mlp", "dims": dims, "normalize_input": False}, in_dim)
    feats = torch.from_numpy(x)
    batch = min(batch_size, len(x) // 2)
    steps_per_epoch = max(1, len(x) // batch)
    opt = torch.optim.AdamW(mlp.parameters(), lr=lr / 2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1)
    target = torch.cat([torch.arange(batch, 2 * batch), torch.arange(0, batch)])
    mlp.train()
    loss_value = math.nan
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = perm[step * batch : (step + 1) * batch]
            pos = graph[idx, torch.randint(0, neighbours, (len(idx),), generator=gen)]
            a = F.dropout(feats[idx], 0.1)
            b = F.dropout(feats[pos], 0.1)
            z = F.normalize(mlp(torch.cat([a, b])), dim=1)
            sim = z @ z.T / temperature
            sim.fill_diagonal_(-1e9)
            loss = F.cross_entropy(sim, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        loss_value = total / steps_per_epoch
        emit(callbacks, "on_adapt", epoch + 1, epochs, loss_value)
        logger.info("adapt epoch %d/%d: loss %.4f", epoch + 1, epochs, loss_value)
    mlp.eval()
    # the head is [L2Normalize, Centre, L2Normalize, *mlp]: the MLP's modules start at index 3
    state = {f"{int(k.split('.', 1)[0]) + 3}.{k.split('.', 1)[1]}": v for k, v in mlp.state_dict().items()}
    info = {"neighbours": neighbours, "temperature": temperature, "epochs": epochs, "final_loss": round(loss_value, 4),
            "knn_seconds": round(knn_s, 2)}  # fmt: skip
    return state, info
