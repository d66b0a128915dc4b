"""Near-duplicate groups in an index: every pair of images at least ``threshold`` alike (cosine), grouped.

    >>> from lookalike import Index
    >>> from lookalike.duplicates import find_duplicates, write_csv
    >>> index = Index.load("photos.index")                      # doctest: +SKIP
    >>> groups = find_duplicates(index)                         # the extractor's calibrated threshold
    >>> write_csv(groups, "duplicates.csv")                     # doctest: +SKIP

**Pairs** come from a range search over the index's unit vectors, never from an N×N matrix:

* ``exact`` (below :data:`~lookalike.index.ann.EXACT_MAX` images): faiss ``IndexFlatIP.range_search`` for
  ``batch`` queries at a time against every stored vector. Memory is faiss's copy of the vectors plus one
  batch's results: at most ``batch × N`` pairs (``batch`` defaults to ``2**25 / N``, at most 1,024), a few
  per image at any sensible threshold. Time is one pass over all ``N²`` products: 20 s for 50,000
  random 128-d vectors on one (shared) core.
* ``hnsw`` (from 100,000 images): an HNSW graph (``faiss.IndexHNSWFlat``, inner product) is built over
  the unit vectors and each image's ``k`` approximate nearest neighbours are kept when they pass the
  threshold. Memory is the graph (about the size of the vectors again) plus ``batch × k`` results.
  An image with more than ``k`` duplicates keeps only ``k`` of the edges, and a neighbour the graph misses
  is a missed edge; groups usually still connect through the other members.

An edge is a pair with similarity ≥ ``threshold - 1e-6`` (the slack absorbs float32 rounding, so
``threshold=1`` finds identical embeddings).

**Groups** are the connected components of those edges (``linkage="single"``, a vectorised union-find).
Single linkage chains: A~B and B~C put A and C together even when A and C are far apart, and at a loose
threshold on a big collection of look-alike pictures (product shots, documents, burst photos) a chain can
swallow hundreds of distinct images. Each group therefore reports the smallest similarity between any two
of its members (``min_similarity``): a value well below the threshold means the group is a chain.
``linkage="star"`` splits every component into stars instead: the member with the most edges becomes a
group's first image, every remaining member at least ``threshold`` alike to it joins, and so on until
fewer than two members are left; every member is then within the threshold of its group's first image.

**The default threshold** depends on the extractor (cosine similarities of raw pixels and of an
EfficientNet's pooled features live on very different scales) and comes from :data:`CALIBRATED`,
measured by ``benchmarks/duplicates_calibration.py`` on copies of CIFAR-10 test images (resized, JPEG
re-compressed, cropped, flipped, brightened, rotated) against distinct images: the highest threshold at
which 90 % of the resized, re-compressed and flipped copies are still paired with their original (or, where
that costs most of the precision, the best-F1 threshold). A threshold calibrated on one model only
approximates another: an autoencoder trained longer or on other images, or an EfficientNet at another input
size, spreads its similarities differently, so pass ``threshold`` when the groups look too loose or strict.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._callbacks import emit
from ._fs import atomic_write_bytes
from .errors import LookalikeError

EDGE_SLACK = 1e-6  # an edge is sim >= threshold - EDGE_SLACK (float32 rounding; threshold 1 = identical)
DEFAULT_K = 32  # hnsw: neighbours examined per image
PAIR_BUDGET = 2**25  # exact: queries per batch = PAIR_BUDGET // N (worst case batch × N pairs in memory)
MAX_BATCH = 1024  # exact: at most this many queries per range search
PAIRWISE_LIMIT = 2048  # a group's min/max pairwise similarity is exact up to this many members, else sampled
METHODS = ("auto", "exact", "hnsw")
LINKAGES = ("single", "star")
FORMAT = "lookalike-duplicates"


@dataclass(frozen=True)
class Calibration:
    """A calibrated default threshold for one extractor and what it achieved when it was measured."""

    threshold: float  # cosine similarity at or above which two images are called duplicates
    recall: float  # share of resized / JPEG re-compressed / flipped copies paired with their original
    precision: float  # share of the pairs found (those copies, their originals, distinct images) that are right
    note: str  # what was measured: the data, the model


CALIBRATION_COMMAND = (
    "OMP_NUM_THREADS=1 python benchmarks/duplicates_calibration.py --originals 1000 --distractors 5000 "
    "--ae-epochs 20 --json benchmarks/results/duplicates_calibration.json"
)

# From the output of CALIBRATION_COMMAND (benchmarks/results/duplicates_calibration.json; 1,000 CIFAR-10 test
# originals, 5,000 other test images, one copy per original and transform; torch 2.13 CPU, precision auto).
# Rule: the highest threshold (grid step 0.005) at which >= 90 % of the resized + JPEG (q30-50) + flipped copies
# are at least that alike to their original, unless core pair precision there is below 0.5: then the best-F1
# threshold (pixels: flips are beyond raw pixels; 90 % recall needs 0.430, where 0.1 % of the pairs are right).
# Recall and precision below are those pooled copies' at the threshold; precision counts every pair among
# originals, distinct images and copies (two copies of one original are a true pair), so it falls as a
# collection holds more distinct images.
CALIBRATED: dict[str, Calibration] = {
    "autoencoder": Calibration(
        0.985, 0.929, 0.939, "the default preset trained 20 epochs on the 5,000 distinct images (a brief training)"
    ),
    "efficientnet-lite0": Calibration(0.755, 0.902, 0.843, "Model.pretrained('efficientnet-lite0', image_size=128)"),
    # the default (issue 14): OMP_NUM_THREADS=1 python benchmarks/duplicates_calibration.py --originals 1000
    # --distractors 5000 --extractors efficientnet-lite0+adapted --lite0-size 160
    # --json benchmarks/results/duplicates_calibration_default.json. Its head is trained to embed views of an
    # image alike, so distinct images of a kind come closer too: 90 % recall costs most of the precision there,
    # and the best-F1 threshold is taken.
    "efficientnet-lite0+adapted": Calibration(
        0.915, 0.717, 0.797, "best F1; the default at 160 px, its head learned on the 5,000 distractors"
    ),
    "pixels": Calibration(0.945, 0.668, 0.936, "best F1: resize 99 %, JPEG 99 %, flip 2 % found"),
}


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are near-duplicates of one another (a connected component, or a star)."""

    ids: tuple[int, ...]  # the first is the member with the most duplicates; the rest by similarity to it
    paths: tuple[Path, ...]  # absolute paths, aligned with ids (empty paths for bare vectors)
    similarities: tuple[float, ...]  # cosine similarity of each member to the first (the first's own is 1)
    max_similarity: float  # largest similarity between two members
    min_similarity: float  # smallest similarity between two members (well below the threshold: a chain)
    pairwise_sampled: bool = False  # min/max measured on a sample of PAIRWISE_LIMIT members (huge groups)

    def __len__(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "size": len(self.ids),
            "max_similarity": round(self.max_similarity, 6),
            "min_similarity": round(self.min_similarity, 6),
            "pairwise_sampled": self.pairwise_sampled,
            "members": [
                {"id": i, "path": str(p) if p is not None else None, "similarity": round(s, 6)}
                for i, p, s in zip(self.ids, self.paths or [None] * len(self.ids), self.similarities)
            ],
        }


# -------------------------------------------------------------------------------------- threshold
def check_threshold(threshold: float) -> float:
    """``threshold`` as a float, or a one-line error unless it is a cosine similarity in (-1, 1]."""
    t = float(threshold)
    if not (math.isfinite(t) and -1.0 < t <= 1.0):
        raise LookalikeError(f"threshold must be a cosine similarity in (-1, 1], got {threshold}")
    return t


def calibration_for(extractor: str) -> Calibration:
    """The calibrated default for an extractor name (``autoencoder``, ``pixels``, ``efficientnet-lite0``...).

    Raises:
        LookalikeError: no calibration for it (an adapted head, a registered extractor); the message says
            to pass a threshold.
    """
    found = CALIBRATED.get(extractor)
    if found is None:
        known = ", ".join(sorted(CALIBRATED))
        raise LookalikeError(
            f"no calibrated duplicate threshold for extractor {extractor!r} (calibrated: {known}); "
            "pass one with --threshold (a cosine similarity, e.g. 0.95)"
        )
    return found


def default_threshold(extractor: str) -> float:
    """The calibrated default threshold for an extractor (see :func:`calibration_for`)."""
    return calibration_for(extractor).threshold


# ------------------------------------------------------------------------------------------ pairs
def _faiss() -> Any:
    from .index.ann import _faiss as load

    return load()


def _as_unit(vectors: np.ndarray) -> np.ndarray:
    """Float32, C-contiguous, rows scaled to unit length (zero rows stay zero); unit vectors are not copied."""
    from .index.exact import l2_normalize

    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise LookalikeError(f"vectors have shape {vectors.shape}; expected (n, d)")
    if vectors.dtype == np.float32 and vectors.flags.c_contiguous:
        sq = np.einsum("ij,ij->i", vectors, vectors)
        if np.all((np.abs(sq - 1) < 1e-4) | (sq == 0)):
            return vectors  # an index's stored vectors: already unit
    return np.ascontiguousarray(l2_normalize(vectors)[0])


def _batch_for(n: int, batch: int | None) -> int:
    if batch is not None:
        if batch < 1:
            raise LookalikeError(f"batch must be at least 1, got {batch}")
        return int(batch)
    return max(1, min(MAX_BATCH, PAIR_BUDGET // max(n, 1)))


def _exact_pairs(
    unit: np.ndarray, threshold: float, batch: int, callbacks: Sequence[Any]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per batch of queries: rows ``i < j`` and similarities of every pair at least ``threshold`` alike."""
    faiss = _faiss()
    n, dim = unit.shape
    flat = faiss.IndexFlatIP(dim)
    flat.add(unit)
    floor = np.float32(threshold - EDGE_SLACK)
    radius = float(np.nextafter(floor, np.float32(-np.inf)))  # faiss keeps sim > radius; we want >= floor
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        with _blas_range_search(stop - start, dim):
            lims, sims, rows = flat.range_search(unit[start:stop], radius)
        qi = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(lims.astype(np.int64)))
        keep = (rows > qi) & (sims >= floor)
        yield qi[keep], rows[keep].astype(np.int64), sims[keep]
        emit(callbacks, "on_duplicates", stop, n)


@contextlib.contextmanager
def _blas_range_search(n_queries: int, dim: int) -> Iterator[None]:
    """Let faiss score a batch with one BLAS product instead of one dot product per pair.

    faiss 1.15 switches to BLAS only when queries × dim reaches ``distance_compute_blas_threshold``
    (128,000): a batch of 671 128-d queries took 6x longer than one of 1,024. The setting is global, so
    it is lowered for the call only; it changes the speed, not the results.
    """
    cvar = getattr(_faiss(), "cvar", None)
    old = getattr(cvar, "distance_compute_blas_threshold", None)
    if old is None or n_queries * dim >= old or n_queries < 20:
        yield
        return
    cvar.distance_compute_blas_threshold = 20
    try:
        yield
    finally:
        cvar.distance_compute_blas_threshold = old


def _hnsw_pairs(
    unit: np.ndarray, threshold: float, k: int, batch: int, callbacks: Sequence[Any]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Like :func:`_exact_pairs`, from each image's ``k`` approximate nearest neighbours in an HNSW graph."""
    faiss = _faiss()
    n, dim = unit.shape
    graph = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = 80
    graph.add(unit)
    graph.hnsw.efSearch = max(2 * k, 64)
    floor = np.float32(threshold - EDGE_SLACK)
    kk = min(k + 1, n)  # + the image itself
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        sims, rows = graph.search(unit[start:stop], kk)
        qi = np.repeat(np.arange(start, stop, dtype=np.int64), kk)
        rows, sims = rows.reshape(-1), sims.reshape(-1)
        keep = (rows >= 0) & (rows != qi) & (sims >= floor)
        a, b = qi[keep], rows[keep]
        lo, hi = np.minimum(a, b), np.maximum(a, b)  # j found i, or i found j: the same pair
        yield lo, hi, sims[keep]
        emit(callbacks, "on_duplicates", stop, n)


def _choose_method(method: str, n: int) -> str:
    if method not in METHODS:
        raise LookalikeError(f"unknown duplicate search method {method!r} (use {', '.join(METHODS)})")
    if method != "auto":
        return method
    from .index.ann import EXACT_MAX

    return "exact" if n < EXACT_MAX else "hnsw"


def iter_pairs(
    vectors: np.ndarray,
    threshold: float,
    *,
    method: str = "auto",
    k: int = DEFAULT_K,
    batch: int | None = None,
    callbacks: Sequence[Any] = (),
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pairs of rows of ``vectors`` whose cosine similarity is at least ``threshold``, a batch at a time.

    Args:
        vectors: ``(n, d)`` float vectors (normalised here).
        threshold: cosine similarity in (-1, 1].
        method: ``exact``, ``hnsw`` or ``auto`` (exact below 100,000 rows); see the module notes.
        k: ``hnsw``: neighbours examined per row.
        batch: query rows per range search (default: memory-bounded, at most 1,024).
        callbacks: objects with an optional ``on_duplicates(done, total)`` (rows searched).

    Yields:
        ``(i, j, similarity)`` arrays with ``i < j``. ``exact`` yields every pair once; ``hnsw`` may yield
        a pair twice (found from both ends).
    """
    threshold = check_threshold(threshold)
    unit = _as_unit(vectors)
    if k < 1:
        raise LookalikeError(f"k must be at least 1, got {k}")
    if len(unit) < 2:
        return
    if _choose_method(method, len(unit)) == "exact":
        yield from _exact_pairs(unit, threshold, _batch_for(len(unit), batch), callbacks)
    else:
        yield from _hnsw_pairs(unit, threshold, k, batch or MAX_BATCH, callbacks)


def similar_pairs(
    vectors: np.ndarray, threshold: float, *, method: str = "auto", k: int = DEFAULT_K, batch: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of :func:`iter_pairs` at once, unique and sorted by ``(i, j)`` (memory: the pairs)."""
    parts = list(iter_pairs(vectors, threshold, method=method, k=k, batch=batch))
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    i, j, s = (np.concatenate(p) for p in zip(*parts))
    order = np.lexsort((j, i))
    i, j, s = i[order], j[order], s[order]
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return i[first], j[first], s[first]


# ----------------------------------------------------------------------------------------- groups
def _roots(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    r = parent[x]
    while True:
        up = parent[r]
        if np.array_equal(up, r):
            return r
        r = up


def _union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Join the components of every pair ``(a[t], b[t])``; a root always points to a smaller root."""
    while len(a):
        ra, rb = _roots(parent, a), _roots(parent, b)
        apart = ra != rb
        if not apart.any():
            return
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))


def _compress(parent: np.ndarray) -> np.ndarray:
    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent
        parent = up


def _pairwise_extremes(unit: np.ndarray, rows: np.ndarray, seed: int = 0) -> tuple[float, float, bool]:
    """(max, min) cosine similarity between two different members, and whether a sample was used."""
    sampled = len(rows) > PAIRWISE_LIMIT
    if sampled:
        rows = np.sort(np.random.default_rng(seed).choice(rows, PAIRWISE_LIMIT, replace=False))
    m = unit[rows]
    sims = m @ m.T
    upper = sims[np.triu_indices(len(rows), 1)]
    return float(min(upper.max(), 1.0)), float(min(upper.min(), 1.0)), sampled


def _star_split(unit: np.ndarray, members: np.ndarray, degree: np.ndarray, floor: float) -> list[np.ndarray]:
    """Split one component into stars around its best-connected members (see the module notes)."""
    left = members[np.lexsort((members, -degree[members]))]  # most edges first, ties by row
    out = []
    while len(left) >= 2:
        centre = left[0]
        close = (unit[left[1:]] @ unit[centre]) >= floor
        if close.any():
            out.append(np.concatenate([[centre], left[1:][close]]))
        left = left[1:][~close]
    return out


def group_rows(
    vectors: np.ndarray,
    threshold: float,
    *,
    linkage: str = "single",
    method: str = "auto",
    k: int = DEFAULT_K,
    batch: int | None = None,
    callbacks: Sequence[Any] = (),
) -> list[tuple[np.ndarray, np.ndarray, float, float, bool]]:
    """Duplicate groups of rows of ``vectors``: ``(rows, similarity to the first, max, min, sampled)``.

    Rows are ordered as :class:`DuplicateGroup` orders ids; groups largest first, then by their largest
    similarity, then by first row. Arguments as in :func:`find_duplicates`.
    """
    threshold = check_threshold(threshold)
    if linkage not in LINKAGES:
        raise LookalikeError(f"unknown linkage {linkage!r} (use {', '.join(LINKAGES)})")
    unit = _as_unit(vectors)
    n = len(unit)
    parent = np.arange(n, dtype=np.int64)
    degree = np.zeros(n, dtype=np.int64)
    for i, j, _ in iter_pairs(unit, threshold, method=method, k=k, batch=batch, callbacks=callbacks):
        if len(i):
            np.add.at(degree, i, 1)
            np.add.at(degree, j, 1)
            _union(parent, i, j)
            parent = _compress(parent)
    roots = _compress(parent)
    order = np.argsort(roots, kind="stable")
    starts = np.flatnonzero(np.r_[True, roots[order][1:] != roots[order][:-1]])
    components = [c for c in np.split(order, starts[1:]) if len(c) >= 2] if n else []
    floor = np.float32(threshold - EDGE_SLACK)
    if linkage == "star":
        components = [s for c in components for s in _star_split(unit, c, degree, floor)]
    groups = []
    for rows in components:
        first = rows[np.lexsort((rows, -degree[rows]))[0]]
        rest = rows[rows != first]
        sims = unit[rest] @ unit[first]
        order = np.lexsort((rest, -sims))
        rows = np.concatenate([[first], rest[order]])
        to_first = np.concatenate([[1.0], np.minimum(sims[order], 1.0)])
        hi, lo, sampled = _pairwise_extremes(unit, rows)
        groups.append((rows, to_first, hi, lo, sampled))
    groups.sort(key=lambda g: (-len(g[0]), -g[2], int(g[0][0])))
    return groups


def find_duplicates(
    index: Any,
    threshold: float | None = None,
    *,
    linkage: str = "single",
    method: str = "auto",
    k: int = DEFAULT_K,
    batch: int | None = None,
    callbacks: Sequence[Any] = (),
) -> list[DuplicateGroup]:
    """Groups of near-duplicate images in an index.

    Args:
        index: a :class:`lookalike.Index` (from ``Index.load`` or ``Index.build``).
        threshold: cosine similarity in (-1, 1] at or above which two images are duplicates; None takes
            the calibrated default of the index's extractor (:func:`default_threshold`).
        linkage: ``single`` (connected components; may chain) or ``star`` (see the module notes).
        method: ``exact`` range search, ``hnsw`` approximate neighbours, or ``auto`` (exact below 100,000
            images).
        k: ``hnsw``: neighbours examined per image.
        batch: images searched at a time (default: memory-bounded, at most 1,024).
        callbacks: objects with an optional ``on_duplicates(done, total)``.

    Returns:
        The groups of two or more images, largest first (then by their largest similarity).

    Raises:
        LookalikeError: a threshold outside (-1, 1], no calibrated default for the extractor, a bad option.
    """
    if threshold is None:
        threshold = default_threshold(index.model.extractor)
    threshold = check_threshold(threshold)
    unit, ids = index_vectors(index.vectors)
    out = []
    for rows, to_first, hi, lo, sampled in group_rows(
        unit, threshold, linkage=linkage, method=method, k=k, batch=batch, callbacks=callbacks
    ):
        gids = tuple(int(i) for i in ids[rows])
        out.append(
            DuplicateGroup(
                ids=gids,
                paths=tuple(index.path_of(i) for i in gids),
                similarities=tuple(float(s) for s in to_first),
                max_similarity=hi,
                min_similarity=lo,
                pairwise_sampled=sampled,
            )
        )
    return out


def index_vectors(store: Any) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors and ids of a vector store: an ``ExactIndex`` directly, another backend reconstructed."""
    if isinstance(getattr(store, "vectors", None), np.ndarray):
        return store.vectors, store.ids
    ids = np.sort(np.asarray(store.ids if not hasattr(store, "dead") else store.ids[~store.dead], dtype=np.int64))
    return _as_unit(store.reconstruct(ids)), ids


# ----------------------------------------------------------------------------------------- output
def to_csv_bytes(groups: Sequence[DuplicateGroup]) -> bytes:
    """``group,id,path,similarity`` rows (group numbers from 1; similarity to the group's first image)."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["group", "id", "path", "similarity"])
    for g, group in enumerate(groups, start=1):
        paths = group.paths or ("",) * len(group.ids)
        for i, p, s in zip(group.ids, paths, group.similarities):
            writer.writerow([g, i, str(p), f"{s:.6f}"])
    return buf.getvalue().encode("utf-8", "surrogateescape")  # a name that is not UTF-8 keeps its own bytes


def to_json_dict(groups: Sequence[DuplicateGroup], **info: Any) -> dict[str, Any]:
    """``{"format", **info, "groups": [...], "images_in_groups"}``; ``info`` records the settings used."""
    return {
        "format": FORMAT,
        **info,
        "groups_found": len(groups),
        "images_in_groups": sum(len(g) for g in groups),
        "groups": [{"group": n, **g.to_dict()} for n, g in enumerate(groups, start=1)],
    }


def write_csv(groups: Sequence[DuplicateGroup], path: str | os.PathLike[str]) -> Path:
    """Write :func:`to_csv_bytes` atomically; returns the path."""
    return _write(path, to_csv_bytes(groups))


def write_json(groups: Sequence[DuplicateGroup], path: str | os.PathLike[str], **info: Any) -> Path:
    """Write :func:`to_json_dict` (indented) atomically; returns the path."""
    return _write(path, (json.dumps(to_json_dict(groups, **info), indent=2) + "\n").encode("utf-8"))


def _write(path: str | os.PathLike[str], data: bytes) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise LookalikeError(f"{path}: is a folder; give a file name")
    atomic_write_bytes(path, data)  # a failure is one line naming the file
    return path
