"""Adapt a pretrained extractor to the user's own, unlabelled images: a small head on its frozen features.

The backbone stays frozen (its features are computed once per image and view); only a head is learned, in
seconds to a few minutes on a CPU, and saved with the model like any other weights. Three methods:

- ``views`` (default): an autoencoder over the backbone's pooled features with an invariance loss. Each
  image is embedded as it is and as :data:`VIEWS` random augmented views (crop, flip, colour jitter,
  grey: :mod:`lookalike.augment`), computed while the folder is decoded (:func:`embed_views`). An MLP
  encoder is trained with NT-Xent between two random versions of an image (half the time the second is a
  frozen-space neighbour instead, as in ``neighbours``), and a decoder reconstructs the image's frozen
  features from the encoding; the encoder is the head. Measured on seven real labelled folders
  (``benchmarks/head_designs.py``, BENCHMARKS.md) it was the best of the designs tried, and the only one
  whose precision@1 stayed at the frozen backbone's on every folder.
- ``neighbours``: a 2-layer MLP trained with NT-Xent in which each image's positive is one of its
  ``neighbours`` nearest images in the frozen feature space, with dropout on the input features as the
  only augmentation; no views are needed (on CIFAR-10 it lifts Lite0's mAP@1000 by about 0.04).
- ``pca``: centring on the collection's mean and a PCA projection to ``dims`` (no whitening, which hurt
  retrieval here); fitted in seconds, a smaller gain.

The safeguard (``blend``, default 0.5, ``views`` and ``neighbours``): the embedding is the head's output
beside the frozen features' own top ``frozen_dims`` directions (:class:`~lookalike.models.pretrained.BlendHead`),
so a similarity is ``blend`` x the frozen one + (1 - ``blend``) x the head's: whatever the head learned,
the ranking keeps half of the backbone's. Without it, a head lost to its frozen backbone on precision@1 on
most real folders, and on mAP@100 where neighbours in the frozen space are often of another class.

All first L2-normalise the features, subtract the collection's mean and normalise again (the head holds
that mean), so they can be applied to any new image exactly as to the ones they were fitted on.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._callbacks import emit
from .augment import Augmentation, random_view
from .errors import LookalikeError
from .models import Model
from .models.pretrained import PretrainedNet

logger = logging.getLogger(__name__)

METHODS = ("views", "neighbours", "pca")
DEFAULT_METHOD = "views"
DEFAULT_EPOCHS = {"views": 30, "neighbours": 10}  # passes over the images (``views``: capped by MAX_STEPS)
MAX_STEPS = 2_000  # a large collection takes fewer epochs of ``views``: the fit stays within minutes on a CPU
VIEWS = 2  # augmented views of each image besides itself (``views``)
VIEWS_TEMPERATURE = 0.7  # NT-Xent's (``views``): 0.2, SimCLR's, scored 0.03-0.05 mAP@100 lower on real folders
VIEW_AUGMENTATION = Augmentation(crop_scale=(0.3, 1.0))  # SimCLR's jitter and grey; crops of 30-100 %
MIN_IMAGES = 16  # fewer images than this cannot fit a head (a batch needs 8 pairs)
MAX_FIT_IMAGES = 100_000  # a larger collection is subsampled (seeded) for fitting: the k-NN graph is O(n^2)


@dataclass
class ViewFeatures:
    """A backbone's features of images and of random augmented views of them (:func:`embed_views`)."""

    original: np.ndarray | None  # (m, D) of the images as they are; None when not asked for
    views: np.ndarray  # (views, m, D): the j-th view of every image
    positions: np.ndarray  # int64 (m,): position of each row's file in the input list (readable files only)
    failures: list[tuple[Path, str]] = field(default_factory=list)  # unreadable files and why


def embed_views(
    base: Model,
    paths: Sequence[str | os.PathLike[str]],
    *,
    views: int = VIEWS,
    augmentation: Augmentation | None = None,
    original: bool = True,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 1,
    callbacks: Sequence[Any] = (),
) -> ViewFeatures:
    """The features of each image and of ``views`` random views of it, each file decoded once.

    Args:
        base: the (frozen) extractor.
        paths: image files.
        views: augmented views per image.
        augmentation: how the views are made (default :data:`VIEW_AUGMENTATION`).
        original: also embed the images as they are.
        seed: seeds the views.
        batch_size: images decoded and embedded together.
        num_workers: processes decoding images.
        callbacks: ``on_embed(done, total)`` and ``on_skip(path, reason)``.
    """
    from .embed import iter_embedded

    aug = augmentation or VIEW_AUGMENTATION
    gen = torch.Generator().manual_seed(seed)
    paths = [Path(p) for p in paths]
    dim = base.embedding_dim
    orig = np.empty((len(paths), dim), np.float32) if original else None
    out = np.empty((views, len(paths), dim), np.float32)
    positions: list[int] = []
    failures: list[tuple[Path, str]] = []

    def encode(pixels: torch.Tensor) -> np.ndarray:  # (n, [1 +] views, D): the image first, when asked for
        made = embed_pixel_views(base, pixels, views, aug, gen, batch_size=batch_size)
        if original:
            made = np.concatenate([base.embed_pixels(pixels, batch_size=batch_size)[None], made])
        return np.moveaxis(made, 0, 1)

    for batch in iter_embedded(base, paths, batch_size=batch_size, num_workers=num_workers, with_hash=False,
                               encode=encode, callbacks=callbacks):  # fmt: skip
        failures.extend((paths[i], reason) for i, reason in batch.failures)
        if batch.positions:
            m, n = len(positions), len(batch.positions)
            made = np.moveaxis(batch.vectors, 1, 0)
            if orig is not None:
                orig[m : m + n], made = made[0], made[1:]
            out[:, m : m + n] = made
            positions.extend(batch.positions)
    m = len(positions)
    return ViewFeatures(None if orig is None else orig[:m], out[:, :m], np.asarray(positions, np.int64), failures)


def embed_pixel_views(
    base: Model,
    pixels: torch.Tensor | np.ndarray,
    views: int,
    augmentation: Augmentation,
    generator: torch.Generator,
    *,
    batch_size: int = 64,
) -> np.ndarray:
    """The features ``(views, n, D)`` of ``views`` random views of each of the prepared uint8 ``pixels``
    ``(n, C, S, S)``: what :func:`embed_views` computes for every decoded batch."""
    x = torch.as_tensor(pixels).float() / 255
    out = np.empty((views, len(x), base.embedding_dim), np.float32)
    for v in range(views):
        view = (random_view(x, augmentation, generator) * 255).round_().to(torch.uint8)
        out[v] = base.embed_pixels(view, batch_size=batch_size)
    return out


def adapt(
    base: Model,
    features: np.ndarray | None = None,
    *,
    paths: Sequence[str | os.PathLike[str]] | None = None,
    views: np.ndarray | None = None,
    augmentation: Augmentation | None = None,
    method: str = DEFAULT_METHOD,
    dims: int = 128,
    hidden: int = 1024,
    neighbours: int = 5,
    neighbour_share: float = 0.5,
    temperature: float | None = None,
    blend: float = 0.5,
    frozen_dims: int = 128,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float = 2e-3,
    seed: int = 0,
    num_workers: int = 1,
    callbacks: Sequence[Any] = (),
) -> Model:
    """A copy of the pretrained ``base`` with a head fitted on the user's images (labels are never used).

    Args:
        base: a pretrained extractor without a head (``Model.pretrained(...)``).
        features: its raw features of the user's images ``(n, D)``; computed from ``paths`` when None.
        paths: the images (needed when ``features`` is None, or for ``views`` when ``views`` is None).
        views: its features of augmented views of the same images ``(V, n, D)`` (``views``; computed from
            ``paths`` with :func:`embed_views` when None).
        augmentation: how those views are made (default :data:`VIEW_AUGMENTATION`).
        method: ``views`` (the default), ``neighbours`` or ``pca`` (see the module's docstring).
        dims: length of the head's output.
        hidden: width of the MLP's hidden layer.
        neighbours: how many nearest images each image may be paired with.
        neighbour_share: the share of an image's positives that are a neighbour rather than a view of it
            (``views``).
        temperature: NT-Xent temperature (default :data:`VIEWS_TEMPERATURE` for ``views``, 0.5 for ``neighbours``).
        blend: weight of the frozen similarity in the embedding's (0: the head alone).
        frozen_dims: frozen directions kept beside the head when blending (an SVD of the unit features).
        epochs: passes over the images (default :data:`DEFAULT_EPOCHS`, ``views`` capped at
            :data:`MAX_STEPS` steps).
        batch_size: images per step (default 256 for ``views``, 512 for ``neighbours``).
        lr: peak learning rate of the one-cycle schedule.
        seed: seeds the subsample, the views, the initialisation and the pairs.
        num_workers: processes decoding images, when features are computed here.
        callbacks: objects with ``on_adapt(epoch, epochs, loss)`` (and the embedding callbacks).

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
    if features is None and paths is None:
        raise LookalikeError("adapt needs the images' features or their paths")
    if method == "views" and views is None:
        if paths is None:
            raise LookalikeError("the views method needs the images' paths (or their views' features: embed_views)")
        got = embed_views(base, paths, augmentation=augmentation, original=features is None, seed=seed,
                          num_workers=num_workers, callbacks=callbacks)  # fmt: skip
        features = got.original if features is None else np.asarray(features)[got.positions]
        views = got.views
    elif features is None:
        from .embed import embed_files

        assert paths is not None
        features = embed_files(base, list(paths), num_workers=num_workers, callbacks=callbacks).vectors
    x = np.asarray(features, dtype=np.float32)
    in_dim = base.network.spec.dim_for(base.preprocessing.image_size)
    if x.ndim != 2 or x.shape[1] != in_dim:
        raise LookalikeError(f"features have shape {x.shape}; {base.extractor} gives {in_dim}-d features")
    if views is not None and method == "views":
        views = np.asarray(views, dtype=np.float32)
        if views.ndim != 3 or views.shape[1:] != x.shape:
            raise LookalikeError(f"views have shape {views.shape}; expected (V, {len(x)}, {in_dim})")
    need = 2 if method == "pca" else max(neighbours + 2, MIN_IMAGES)
    if len(x) < need:
        raise LookalikeError(f"adapting needs at least {need} images, got {len(x)}")
    rng = np.random.default_rng(seed)
    if len(x) > MAX_FIT_IMAGES:
        keep = np.sort(rng.choice(len(x), MAX_FIT_IMAGES, replace=False))
        x = x[keep]
        views = None if views is None else views[:, keep]
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
        head_cfg = {"name": "adapted", "method": method, "kind": "mlp", "dims": dims_list, "center": True}
        versions = None
        if method == "views":
            assert views is not None
            versions = np.concatenate([centred[None], _l2(_l2(views) - mean)])
        state, info = _fit_head(
            centred, versions, dims_list, neighbours=neighbours, neighbour_share=neighbour_share,
            temperature=temperature or (VIEWS_TEMPERATURE if method == "views" else 0.5), epochs=epochs,
            batch_size=batch_size or (256 if method == "views" else 512), lr=lr, seed=seed, callbacks=callbacks,
        )  # fmt: skip
        state["1.mean"] = torch.from_numpy(mean)  # the head is [L2Normalize, Centre, L2Normalize, ...]
        if blend:
            keep_dims = min(frozen_dims, in_dim, len(x))
            head_cfg.update(blend=float(blend), frozen_dims=keep_dims)
            state = {f"learned.{k}": v for k, v in state.items()}
            state["frozen.weight"] = torch.from_numpy(_top_directions(unit, keep_dims, rng))
            info = {**info, "blend": float(blend), "frozen_dims": keep_dims}
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


def _nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent: each of ``a``'s rows should pick its partner in ``b`` (and back) out of the whole batch."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(-1e9)
    n = len(a)
    return F.cross_entropy(sim, torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]))


def _fit_head(
    x: np.ndarray,
    versions: np.ndarray | None,
    dims: list[int],
    *,
    neighbours: int,
    neighbour_share: float,
    temperature: float,
    epochs: int | None,
    batch_size: int,
    lr: float,
    seed: int,
    callbacks: Sequence[Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the MLP head on the centred unit features ``x`` ``(n, D)``; returns its state (module indices of
    the head) and what to record of the fit.

    Without ``versions`` (``neighbours``): the positive of each image is one of its frozen-space neighbours,
    dropout on the features the only augmentation. With ``versions`` ``(V, n, D)`` (``views``: the images
    and their augmented views, centred the same way): the positive is another random version of the same
    image, or (``neighbour_share`` of the time) a neighbour's original, and a decoder (discarded
    afterwards) reconstructs the image's features from the first version's encoding.
    """
    from .models.pretrained import build_head

    in_dim = x.shape[1]
    t0 = time.perf_counter()
    graph = torch.from_numpy(knn_graph(x, neighbours))
    knn_s = time.perf_counter() - t0
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    mlp = build_head({"kind": "mlp", "dims": dims, "normalize_input": False}, in_dim)
    decoder = None
    if versions is not None:
        decoder = build_head({"kind": "mlp", "dims": [dims[0], in_dim], "normalize_input": False}, dims[-1])
    params = [*mlp.parameters(), *(decoder.parameters() if decoder is not None else ())]
    feats = torch.from_numpy(x)
    every = torch.from_numpy(versions) if versions is not None else None
    batch = min(batch_size, len(x) // 2)
    steps_per_epoch = max(1, len(x) // batch)
    if epochs is None:
        epochs = DEFAULT_EPOCHS["views" if versions is not None else "neighbours"]
        if versions is not None:
            epochs = max(3, min(epochs, MAX_STEPS // steps_per_epoch))
    opt = torch.optim.AdamW(params, lr=lr / 2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1)
    mlp.train()
    if decoder is not None:
        decoder.train()
    loss_value = math.nan
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = perm[step * batch : (step + 1) * batch]
            pos = graph[idx, torch.randint(0, neighbours, (len(idx),), generator=gen)]
            if every is None:
                a, b = feats[idx], feats[pos]
            else:
                n_versions = len(every)
                a = every[torch.randint(0, n_versions, (len(idx),), generator=gen), idx]
                b = every[torch.randint(0, n_versions, (len(idx),), generator=gen), idx]
                b = torch.where((torch.rand(len(idx), generator=gen) < neighbour_share)[:, None], feats[pos], b)
            za, zb = mlp(F.dropout(a, 0.1)), mlp(F.dropout(b, 0.1))
            loss = _nt_xent(za, zb, temperature)
            if decoder is not None:
                rec = F.normalize(decoder(za), dim=1)
                loss = loss + F.mse_loss(rec, feats[idx]) * in_dim
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
    if versions is not None:
        info.update(views=len(versions) - 1, neighbour_share=neighbour_share)
    return state, info
