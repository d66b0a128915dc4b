"""Approximate nearest-neighbour backends on faiss, behind the same contract as :class:`ExactIndex`.

Both backends take raw float32 vectors, store them L2-normalised (plus each vector's original norm) and
answer ``search(queries, k, metric=, exclude=) -> (scores, ids)`` of shape ``(n, k)``, padded with id
``-1`` and score ``-inf`` (cosine) or ``+inf`` (euclidean), ties settled by id.

* :class:`HNSWIndex`: ``faiss.IndexHNSWFlat`` over unit vectors with inner product (cosine). The float32
  unit vectors live in the graph's storage, so results are exactly scored; only the candidate set is
  approximate. **euclidean** is answered by re-ranking an HNSW cosine shortlist of ``max(4k, 64)``
  candidates by the exact distance between the original vectors (reconstructed as unit * norm); it is
  approximate twice over (the graph, and a neighbour by distance may not be in the cosine shortlist).
  **remove**: HNSW cannot delete, so removed rows become tombstones filtered at search time (the search
  over-fetches to fill ``k``); when tombstones exceed 20 % of the rows the graph is rebuilt from the
  live vectors.
* :class:`IVFPQIndex`: for memory. ``faiss.IndexIVFPQ`` (inner product on unit vectors; nlist ``2*sqrt(n)``,
  ``dim/4`` one-byte PQ codes: 32 B at 128-d; nprobe 32) finds a shortlist of ``max(10 * k, 100)``
  candidates, which are **re-scored with an 8-bit scalar-quantized copy** of every unit vector (``refine="sq8"``,
  ``dim`` bytes, per-dimension min/max of the training sample, 255 steps). No float vectors are kept, so
  every score is approximate: cosine = the query's dot product with the decoded sq8 vector (off by about
  1e-3), euclidean = ``sqrt(|q|^2 + |x|^2 - 2|q||x| cos)`` with the exact norms, over a shortlist of
  ``10 * max(4k, 64)``. ``refine="none"`` keeps PQ codes only (cosine from the PQ codes: less memory,
  lower recall). Memory at 1M x 128-d with the defaults: 32 (PQ) + 8 (row number in the lists) + 128
  (sq8) + 8 (row -> id) + 4 (norm) = 180 B a vector, ~181 MB (the process grew by 206 MB: allocator
  overhead); ``m=16`` ~165 MB; ``m=64, refine="none"`` ~85 MB (116 MB measured, recall@10 0.86).
  Why (``benchmarks/ann_scale.py``, BENCHMARKS.md, 100k x 128-d, recall@10 vs exact): PQ alone tops out
  at 0.65 (16 B), 0.80 (32 B), 0.93 (64 B) on clustered vectors whatever nprobe, and at 0.86 (64 B) on
  CIFAR-10 embeddings; OPQ adds ~0.01. Re-ranking the shortlist with sq8 lifts clustered vectors to 0.98
  with 16 PQ bytes, but real embeddings, whose neighbours' scores lie close together, need 32: PQ16 + sq8
  reaches 0.86 (shortlist 100) or 0.93 (200), PQ32 + sq8 0.955 at nprobe 32 (0.92 at 16). Training waits
  until ``max(1000, 39 * nlist)`` vectors have arrived (``nlist`` given, or 1000 when it is chosen
  automatically): until then vectors are held in an :class:`ExactIndex` and answers are exact; the add
  that reaches the threshold trains on (a seeded sample of at most ``64 * nlist`` of) everything held and
  moves it in. faiss's ids are our row numbers; ``remove`` is native (``remove_ids``) and marks the row,
  and past 20 % removed rows the rows are renumbered (the ids in the inverted lists rewritten in place).

:func:`choose_backend` picks by size: ``exact`` below 100,000 vectors (one BLAS product is fast enough on
a laptop there, and exact), ``hnsw`` below 2,000,000 when its memory estimate fits the budget (8 GiB by
default), else ``ivfpq``. faiss is imported lazily, with a clear error when missing.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import LookalikeError
from .exact import ExactIndex, check_search, check_vectors, l2_normalize

BACKENDS = ("exact", "hnsw", "ivfpq")
EXACT_MAX = 100_000  # choose_backend: exact below this many vectors
HNSW_MAX = 2_000_000  # ... hnsw below this many (and within the memory budget), ivfpq above
MEMORY_BUDGET = 8 * 2**30  # bytes an HNSW index may take before choose_backend prefers ivfpq
SHORTLIST_MIN = 64  # euclidean: re-rank max(4k, SHORTLIST_MIN) cosine candidates


@functools.cache
def _faiss():
    try:
        import faiss
    except ImportError:
        raise LookalikeError(
            "the hnsw and ivfpq index backends need faiss: pip install faiss-cpu (or use --backend exact)"
        ) from None
    return faiss


def _hnsw_bytes(n: int, dim: int, M: int = 32) -> int:
    """Memory estimate of an HNSW index: float32 vectors, ~2M int32 links per row (level 0) plus upper
    levels (~1/M of rows, M links each), and our ids/norms/tombstones."""
    return int(n * (4 * dim + 4 * 2 * M + 4 * M / max(M - 1, 1) + 8 + 4 + 1))


def choose_backend(n: int, dim: int, requested: str = "auto", memory_budget: int = MEMORY_BUDGET) -> str:
    """The backend for ``n`` vectors of ``dim`` dimensions: ``requested`` unless it is ``auto``."""
    if requested != "auto":
        if requested not in BACKENDS:
            raise LookalikeError(f"unknown index backend {requested!r} (use auto, {', '.join(BACKENDS)})")
        return requested
    if n < EXACT_MAX:
        return "exact"
    if n < HNSW_MAX and _hnsw_bytes(n, dim) <= memory_budget:
        return "hnsw"
    return "ivfpq"


def make_index(backend: str, dim: int, **kw):
    """A new, empty index of the named backend (keyword arguments go to its constructor)."""
    if backend == "exact":
        return ExactIndex(dim, **kw)
    if backend == "hnsw":
        return HNSWIndex(dim, **kw)
    if backend == "ivfpq":
        return IVFPQIndex(dim, **kw)
    raise LookalikeError(f"unknown index backend {backend!r} (use {', '.join(BACKENDS)})")


class _Base:
    """Argument checks and result assembly shared by the faiss backends."""

    dim: int

    def _check(self, vectors: np.ndarray, what: str) -> np.ndarray:
        return check_vectors(vectors, self.dim, what)

    def _check_add(self, vectors: np.ndarray, ids: np.ndarray, existing: np.ndarray):
        vectors = self._check(vectors, "vectors")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(vectors):
            raise LookalikeError(f"{len(vectors)} vectors but {len(ids)} ids")
        if np.any(ids < 0):
            raise LookalikeError("ids must be non-negative (-1 marks a missing result)")
        if np.intersect1d(ids, existing).size or len(np.unique(ids)) != len(ids):
            raise LookalikeError("ids must be unique and not already in the index")
        return vectors, ids

    def _check_search(self, queries, k, metric, exclude):
        queries, exclude = check_search(queries, k, metric, exclude, self.dim)
        if exclude is None:
            exclude = np.full(len(queries), -1, dtype=np.int64)
        return queries, exclude

    @staticmethod
    def _finish(cand_ids: np.ndarray, cand_scores: np.ndarray, k: int, metric: str):
        """Best ``k`` per row from candidates (id -1 = none), ties by id, padded."""
        n = len(cand_ids)
        worst = -np.inf if metric == "cosine" else np.inf
        out_s = np.full((n, k), worst, dtype=np.float32)
        out_i = np.full((n, k), -1, dtype=np.int64)
        for r in range(n):
            ok = cand_ids[r] >= 0
            ids, sc = cand_ids[r][ok], cand_scores[r][ok]
            key = -sc if metric == "cosine" else sc
            order = np.lexsort((ids, key))[:k]
            out_s[r, : len(order)] = sc[order]
            out_i[r, : len(order)] = ids[order]
        return out_s, out_i


class HNSWIndex(_Base):
    """Approximate search on an HNSW graph (faiss ``IndexHNSWFlat``, inner product on unit vectors)."""

    REBUILD_FRACTION = 0.2  # rebuild the graph when tombstones exceed this share of rows

    def __init__(self, dim: int, M: int = 32, ef_construction: int = 200, ef_search: int = 128) -> None:
        self.dim, self.M, self.ef_construction, self.ef_search = int(dim), int(M), int(ef_construction), int(ef_search)
        self._index = self._new_graph()
        self.ids = np.empty((0,), dtype=np.int64)  # row -> id (rows as faiss numbers them)
        self.norms = np.empty((0,), dtype=np.float32)
        self.dead = np.empty((0,), dtype=bool)  # tombstones
        self.rebuilds = 0

    def _new_graph(self):
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(self.dim, self.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    def __len__(self) -> int:
        return int(len(self.ids) - self.dead.sum())

    @property
    def live_ids(self) -> np.ndarray:
        return self.ids[~self.dead]

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add raw vectors (normalised here) under new ids."""
        vectors, ids = self._check_add(vectors, ids, self.live_ids)
        unit, norms = l2_normalize(vectors)
        self._index.add(unit)
        self.ids = np.concatenate([self.ids, ids])
        self.norms = np.concatenate([self.norms, norms])
        self.dead = np.concatenate([self.dead, np.zeros(len(ids), dtype=bool)])

    def remove(self, ids: np.ndarray) -> int:
        """Tombstone entries by id (rebuilding the graph past 20 % tombstones); returns how many."""
        hit = np.isin(self.ids, np.asarray(ids, dtype=np.int64)) & ~self.dead
        self.dead |= hit
        if self.dead.sum() > self.REBUILD_FRACTION * len(self.ids):
            self._rebuild()
        return int(hit.sum())

    def _rebuild(self) -> None:
        live = np.flatnonzero(~self.dead)
        unit = self._unit(live)
        self._index = self._new_graph()
        if len(live):
            self._index.add(unit)
        self.ids, self.norms = self.ids[live], self.norms[live]
        self.dead = np.zeros(len(live), dtype=bool)
        self.rebuilds += 1

    def _unit(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.empty((0, self.dim), dtype=np.float32)
        return self._index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of live ids (raises LookalikeError for unknown ids)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        live = np.flatnonzero(~self.dead)
        order = live[np.argsort(self.ids[live], kind="stable")]
        pos = np.minimum(np.searchsorted(self.ids[order], ids), max(len(order) - 1, 0))
        if not len(order) or np.any(self.ids[order[pos]] != ids):
            missing = ids[~np.isin(ids, self.ids[live])]
            raise LookalikeError(f"no entry with id {int(missing[0])} in the index")
        return order[pos]

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The original (un-normalised) vectors of the given ids."""
        rows = self.rows_of(ids)
        return self._unit(rows) * self.norms[rows, None]

    def search(self, queries, k: int, *, metric: str = "cosine", exclude=None):
        """The approximate ``k`` nearest entries of each query (see the module notes)."""
        queries, exclude = self._check_search(queries, k, metric, exclude)
        q_unit, q_norm = l2_normalize(queries)
        n, total = len(queries), len(self.ids)
        if total == 0 or len(self) == 0:
            return self._finish(np.full((n, 1), -1), np.zeros((n, 1), np.float32), k, metric)
        want = k if metric == "cosine" else max(4 * k, SHORTLIST_MIN)
        fetch = min(total, want + 1 + min(int(self.dead.sum()), 32))
        pending = np.arange(n)
        cand_rows = [None] * n
        cand_sims = [None] * n
        while len(pending):
            self._index.hnsw.efSearch = max(self.ef_search, fetch)
            sims, rows = self._index.search(q_unit[pending], fetch)
            again = []
            for j, r in enumerate(pending):
                ok = rows[j] >= 0
                ok[ok] &= ~self.dead[rows[j][ok]]
                ok[ok] &= self.ids[rows[j][ok]] != exclude[r]
                cand_rows[r], cand_sims[r] = rows[j][ok], sims[j][ok]
                if ok.sum() < want and fetch < total:
                    again.append(r)
            pending = np.asarray(again, dtype=np.int64)
            fetch = min(total, 2 * fetch)
        self._index.hnsw.efSearch = self.ef_search
        width = max(len(c) for c in cand_rows) or 1
        out_ids = np.full((n, width), -1, dtype=np.int64)
        out_sc = np.zeros((n, width), dtype=np.float32)
        for r in range(n):
            rows = cand_rows[r]
            out_ids[r, : len(rows)] = self.ids[rows]
            if metric == "cosine":
                out_sc[r, : len(rows)] = cand_sims[r]
            else:
                raw = self._unit(rows) * self.norms[rows, None]
                out_sc[r, : len(rows)] = np.linalg.norm(raw - q_unit[r] * q_norm[r], axis=1)
        return self._finish(out_ids, out_sc, k, metric)

    def memory_bytes(self) -> int:
        """Estimated resident size in bytes."""
        return _hnsw_bytes(len(self.ids), self.dim, self.M)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``index.faiss``, ``ids.npy``, ``norms.npy``, ``dead.npy`` and ``params.json`` into a new
        (temporary) directory."""
        directory = Path(directory)
        _faiss().write_index(self._index, str(directory / "index.faiss"))
        np.save(directory / "ids.npy", self.ids, allow_pickle=False)
        np.save(directory / "norms.npy", self.norms, allow_pickle=False)
        np.save(directory / "dead.npy", self.dead, allow_pickle=False)
        params = {
            "backend": "hnsw",
            "dim": self.dim,
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
        }
        (directory / "params.json").write_text(json.dumps(params))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> HNSWIndex:
        """Read what :meth:`save` wrote."""
        directory = Path(directory)
        try:
            params = json.loads((directory / "params.json").read_text())
            index = cls(params["dim"], params["M"], params["ef_construction"], params["ef_search"])
            index._index = _faiss().read_index(str(directory / "index.faiss"))
            index.ids = np.load(directory / "ids.npy", allow_pickle=False).astype(np.int64)
            index.norms = np.load(directory / "norms.npy", allow_pickle=False).astype(np.float32)
            index.dead = np.load(directory / "dead.npy", allow_pickle=False).astype(bool)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise LookalikeError(f"{directory}: unreadable hnsw index ({exc})") from None
        if not (len(index.ids) == len(index.norms) == len(index.dead) == index._index.ntotal):
            raise LookalikeError(f"{directory}: hnsw graph, ids, norms and tombstones disagree in length")
        index._index.hnsw.efSearch = index.ef_search
        return index


def _pq_subquantizers(dim: int) -> int:
    """Largest divisor of ``dim`` that is at most ``dim / 4`` (at least 1): 32 one-byte codes at 128-d."""
    for m in range(max(dim // 4, 1), 0, -1):
        if dim % m == 0:
            return m
    return 1


REFINES = ("sq8", "none")


class IVFPQIndex(_Base):
    """Approximate, compressed search: faiss ``IndexIVFPQ`` shortlists, 8-bit codes re-rank them.

    Args:
        dim: Dimension of the vectors.
        nlist: Inverted lists (coarse centroids); ``None`` chooses ``2 * sqrt(n)`` (at most ``n / 39``) at
            training time.
        m: PQ sub-quantizers (bytes per vector with 8-bit codes); ``None`` is ``dim / 4`` (32 at 128-d).
        nbits: Bits per PQ code.
        nprobe: Lists visited per query.
        refine: ``sq8`` keeps an 8-bit scalar-quantized copy of every unit vector (``dim`` bytes) and
            re-scores a shortlist of ``max(shortlist_factor * k, 100)`` PQ candidates with it; ``none`` keeps
            PQ codes only (least memory, lower recall).
        shortlist_factor: PQ candidates per wanted result when re-ranking.
    """

    SHORTLIST_MIN = 100  # re-ranked candidates at least
    COMPACT_FRACTION = 0.2  # renumber rows when removed rows exceed this share

    def __init__(
        self,
        dim: int,
        nlist: int | None = None,
        m: int | None = None,
        nbits: int = 8,
        nprobe: int = 32,
        refine: str = "sq8",
        shortlist_factor: int = 10,
    ) -> None:
        self.dim = int(dim)
        self.nlist = None if nlist is None else int(nlist)
        self.m = _pq_subquantizers(self.dim) if m is None else int(m)
        if self.m < 1 or self.dim % self.m:
            raise LookalikeError(f"pq subquantizers m={self.m} must divide the dimension {self.dim}")
        if refine not in REFINES:
            raise LookalikeError(f"unknown ivfpq refine {refine!r} (use {', '.join(REFINES)})")
        self.nbits, self.nprobe, self.refine = int(nbits), int(nprobe), refine
        self.shortlist_factor = int(shortlist_factor)
        self._index = None  # the trained faiss index (its ids are our row numbers), None while untrained
        self._pending = ExactIndex(self.dim)  # vectors waiting for training
        self.row_ids = np.empty((0,), dtype=np.int64)  # row -> id, -1 for a removed row
        self.norms = np.empty((0,), dtype=np.float32)  # row -> original norm
        self.codes: np.ndarray | None = None  # row -> sq8 code of the unit vector (refine="sq8")
        self.sq_min = np.zeros(self.dim, dtype=np.float32)  # sq8: per-dimension range of the training vectors
        self.sq_step = np.ones(self.dim, dtype=np.float32)
        self._lookup_cache: tuple[np.ndarray, np.ndarray] | None = None
        self._live = 0  # rows whose id is not -1 (kept so len() costs nothing per search)

    @property
    def trained(self) -> bool:
        return self._index is not None

    def train_size(self) -> int:
        """Vectors needed before the quantizers are trained."""
        return max(1000, 39 * self.nlist) if self.nlist is not None else 1000

    def __len__(self) -> int:
        return self._live if self.trained else len(self._pending)

    @property
    def ids(self) -> np.ndarray:
        """The ids held, sorted."""
        return self._lookup()[0] if self.trained else np.sort(self._pending.ids)

    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted live ids, their rows), cached until the next change."""
        if self._lookup_cache is None:
            live = np.flatnonzero(self.row_ids >= 0)
            order = np.argsort(self.row_ids[live], kind="stable")
            self._lookup_cache = (self.row_ids[live][order], live[order])
        return self._lookup_cache

    def _all_ids(self) -> np.ndarray:
        return self.ids if self.trained else self._pending.ids

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add raw vectors under new ids (training on the first add that reaches :meth:`train_size`)."""
        vectors, ids = self._check_add(vectors, ids, self._all_ids())
        if not self.trained:
            self._pending.add(vectors, ids)
            if len(self._pending) >= self.train_size():
                self._train()
            return
        self._add_trained(*l2_normalize(vectors), ids)

    def _train(self) -> None:
        faiss = _faiss()
        pending = self._pending
        n = len(pending)
        if self.nlist is None:
            self.nlist = max(1, min(int(2 * math.sqrt(n)), n // 39))
        sample = pending.vectors
        if n > 64 * self.nlist:  # k-means gains little past ~64 points a centroid; a seeded sample
            sample = sample[np.sort(np.random.default_rng(0).choice(n, 64 * self.nlist, replace=False))]
        sample = np.ascontiguousarray(sample)
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQ(quantizer, self.dim, self.nlist, self.m, self.nbits, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.nprobe = self.nprobe
        if self.refine == "sq8":
            lo, hi = sample.min(axis=0), sample.max(axis=0)
            self.sq_min = lo.astype(np.float32)
            self.sq_step = (np.maximum(hi - lo, 1e-12) / 255).astype(np.float32)
            self.codes = np.empty((0, self.dim), dtype=np.uint8)
        self._quantizer = quantizer  # keep the python object alive alongside the index
        self._index = index
        self._pending = ExactIndex(self.dim)
        self._add_trained(pending.vectors, pending.norms, pending.ids)

    def _encode(self, unit: np.ndarray) -> np.ndarray:
        q = np.rint((unit - self.sq_min) / self.sq_step)
        return np.clip(q, 0, 255).astype(np.uint8)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float32) * self.sq_step + self.sq_min

    def _add_trained(self, unit: np.ndarray, norms: np.ndarray, ids: np.ndarray) -> None:
        start = len(self.row_ids)
        chunk = 65536
        parts = []
        for s in range(0, len(ids), chunk):
            block = np.ascontiguousarray(unit[s : s + chunk], dtype=np.float32)
            self._index.add_with_ids(block, np.arange(start + s, start + s + len(block), dtype=np.int64))
            if self.codes is not None:
                parts.append(self._encode(block))
        if self.codes is not None and parts:
            self.codes = np.concatenate([self.codes, *parts]) if len(self.codes) else np.concatenate(parts)
        self.row_ids = np.concatenate([self.row_ids, ids])
        self.norms = np.concatenate([self.norms, np.asarray(norms, dtype=np.float32)])
        self._live += len(ids)
        self._lookup_cache = None

    def remove(self, ids: np.ndarray) -> int:
        """Remove entries by id; returns how many were removed (rows are renumbered past 20 % removed)."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not self.trained:
            return self._pending.remove(ids)
        sorted_ids, rows = self._lookup()
        gone = rows[np.isin(sorted_ids, ids)]
        if len(gone):
            faiss, gone = _faiss(), np.ascontiguousarray(gone, dtype=np.int64)
            hashed = self._index.direct_map.type != faiss.DirectMap.NoMap  # (only after a reconstruct)
            selector = faiss.IDSelectorArray(len(gone), faiss.swig_ptr(gone)) if hashed else faiss.IDSelectorBatch(gone)
            self._index.remove_ids(selector)
            self.row_ids[gone] = -1
            self._live -= len(gone)
            self._lookup_cache = None
            if np.count_nonzero(self.row_ids < 0) > self.COMPACT_FRACTION * len(self.row_ids):
                self._compact()
        return int(len(gone))

    def _compact(self) -> None:
        """Drop removed rows from our arrays and renumber the ids in the inverted lists to match."""
        faiss = _faiss()
        live = self.row_ids >= 0
        remap = np.full(len(self.row_ids), -1, dtype=np.int64)
        remap[live] = np.arange(int(live.sum()), dtype=np.int64)
        invlists = self._index.invlists
        for lst in range(invlists.nlist):
            size = invlists.list_size(lst)
            if size:
                view = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
                view[:] = remap[view]
        if self._index.direct_map.type != faiss.DirectMap.NoMap:
            self._index.set_direct_map_type(faiss.DirectMap.NoMap)
        self.row_ids, self.norms = self.row_ids[live], self.norms[live]
        if self.codes is not None:
            self.codes = self.codes[live]
        self._lookup_cache = None

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ids (raises LookalikeError for unknown ids)."""
        if not self.trained:
            return self._pending.rows_of(ids)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        sorted_ids, rows = self._lookup()
        pos = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
        if not len(sorted_ids) or np.any(sorted_ids[pos] != ids):
            missing = ids[~np.isin(ids, sorted_ids)]
            raise LookalikeError(f"no entry with id {int(missing[0])} in the index")
        return rows[pos]

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of the given ids: exact before training; after, decoded from the sq8 codes (or the PQ
        codes with ``refine="none"``), so approximate."""
        if not self.trained:
            return self._pending.reconstruct(ids)
        rows = self.rows_of(ids)
        if self.codes is not None:
            unit = self._decode(self.codes[rows])
        elif len(rows):
            if self._index.direct_map.type == _faiss().DirectMap.NoMap:
                self._index.set_direct_map_type(_faiss().DirectMap.Hashtable)
            unit = np.stack([self._index.reconstruct(int(r)) for r in rows])
        else:
            unit = np.empty((0, self.dim), np.float32)
        return unit * self.norms[rows, None]

    def search(self, queries, k: int, *, metric: str = "cosine", exclude=None):
        """The approximate ``k`` nearest entries of each query (exact while untrained; see module notes)."""
        queries, exclude = self._check_search(queries, k, metric, exclude)
        if not self.trained:
            return self._pending.search(queries, k, metric=metric, exclude=exclude)
        n, live = len(queries), len(self)
        if live == 0:
            return self._finish(np.full((n, 1), -1), np.zeros((n, 1), np.float32), k, metric)
        q_unit, q_norm = l2_normalize(queries)
        want = k if metric == "cosine" else max(4 * k, SHORTLIST_MIN)
        if self.codes is not None:
            want = max(self.shortlist_factor * want, self.SHORTLIST_MIN)
        sims, rows = self._index.search(q_unit, min(want + 1, live))
        ok = rows >= 0
        ids = np.full(rows.shape, -1, dtype=np.int64)
        ids[ok] = self.row_ids[rows[ok]]
        ids[ids == exclude[:, None]] = -1
        if self.codes is not None:  # re-score the shortlist with the 8-bit codes, 64 queries at a time
            for s in range(0, n, 64):
                r = np.where(ok[s : s + 64], rows[s : s + 64], 0)
                approx = self._decode(self.codes[r])
                sims[s : s + 64] = np.matmul(approx, q_unit[s : s + 64, :, None])[:, :, 0]
        if metric == "cosine":
            return self._finish(ids, sims, k, metric)
        xn = np.zeros(rows.shape, dtype=np.float32)
        xn[ok] = self.norms[rows[ok]]
        qn = q_norm[:, None]
        dist = np.sqrt(np.maximum(qn**2 + xn**2 - 2 * qn * xn * sims, 0.0))
        return self._finish(ids, dist.astype(np.float32), k, metric)

    def memory_bytes(self) -> int:
        """Estimated resident size in bytes: PQ codes and 8-byte row numbers in the lists, sq8 codes, our
        row -> id and norms, coarse and PQ centroids."""
        if not self.trained:
            return len(self._pending) * (4 * self.dim + 12)
        per_row = self.m * self.nbits // 8 + 8 + 8 + 4 + (self.dim if self.codes is not None else 0)
        return int(len(self.row_ids) * per_row + 4 * self.dim * (self.nlist + 2**self.nbits))

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``params.json`` and either ``index.faiss`` + ``row_ids.npy`` + ``norms.npy`` (+ ``codes.npy``
        and ``sq.npy``) (trained) or the waiting exact vectors (untrained) into a new (temporary) directory."""
        directory = Path(directory)
        params = {
            "backend": "ivfpq",
            "dim": self.dim,
            "nlist": self.nlist,
            "m": self.m,
            "nbits": self.nbits,
            "nprobe": self.nprobe,
            "refine": self.refine,
            "shortlist_factor": self.shortlist_factor,
            "trained": self.trained,
        }
        if self.trained:
            _faiss().write_index(self._index, str(directory / "index.faiss"))
            np.save(directory / "row_ids.npy", self.row_ids, allow_pickle=False)
            np.save(directory / "norms.npy", self.norms, allow_pickle=False)
            if self.codes is not None:
                np.save(directory / "codes.npy", self.codes, allow_pickle=False)
                np.save(directory / "sq.npy", np.stack([self.sq_min, self.sq_step]), allow_pickle=False)
        else:
            self._pending.save(directory)
        (directory / "params.json").write_text(json.dumps(params))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> IVFPQIndex:
        """Read what :meth:`save` wrote."""
        directory = Path(directory)
        try:
            p = json.loads((directory / "params.json").read_text())
            index = cls(p["dim"], p["nlist"], p["m"], p["nbits"], p["nprobe"], p["refine"], p["shortlist_factor"])
            if p["trained"]:
                index._index = _faiss().read_index(str(directory / "index.faiss"))
                index._index.nprobe = index.nprobe
                index.row_ids = np.load(directory / "row_ids.npy", allow_pickle=False).astype(np.int64)
                index.norms = np.load(directory / "norms.npy", allow_pickle=False).astype(np.float32)
                index._live = int(np.count_nonzero(index.row_ids >= 0))
                if index.refine == "sq8":
                    index.codes = np.load(directory / "codes.npy", allow_pickle=False).astype(np.uint8)
                    index.sq_min, index.sq_step = np.load(directory / "sq.npy", allow_pickle=False).astype(np.float32)
            else:
                index._pending = ExactIndex.load(directory)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise LookalikeError(f"{directory}: unreadable ivfpq index ({exc})") from None
        if index.trained and not (
            len(index.row_ids) == len(index.norms)
            and index._index.ntotal == len(index)
            and (index.codes is None or len(index.codes) == len(index.row_ids))
        ):
            raise LookalikeError(f"{directory}: ivfpq codes, ids and norms disagree in length")
        return index
