"""Exact (brute-force) search with one BLAS matrix product per chunk of queries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import LookalikeError
from . import fp16

METRICS = ("cosine", "euclidean")


def l2_normalize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit length (zero rows stay zero): ``(unit float32 vectors, original norms)``.

    The input is never modified: one float32 copy is made and normalised in place.
    """
    vectors = np.array(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1).astype(np.float32)
    vectors /= np.where(norms > 0, norms, np.float32(1.0))[:, None]
    return vectors, norms


def check_vectors(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    """``vectors`` as float32 ``(n, dim)`` (one 1-d vector becomes a row), or a one-line error naming ``what``."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise LookalikeError(f"{what} have shape {vectors.shape}; this index holds {dim}-d vectors")
    return vectors


def check_search(
    queries: np.ndarray, k: int, metric: str, exclude: np.ndarray | None, dim: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The checked arguments of a ``search``: float32 ``(n, dim)`` queries and the exclusion ids (or None).

    Raises:
        LookalikeError: an unknown metric, ``k < 1``, queries of the wrong shape, or one exclusion per query missing.
    """
    if metric not in METRICS:
        raise LookalikeError(f"unknown metric {metric!r} (use cosine or euclidean)")
    if k < 1:
        raise LookalikeError(f"k must be at least 1, got {k}")
    queries = check_vectors(queries, dim, "queries")
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
        if len(exclude) != len(queries):
            raise LookalikeError(f"exclude has {len(exclude)} ids for {len(queries)} queries")
    return queries, exclude


class ExactIndex:
    """Exact nearest neighbours over unit vectors, remembering each vector's original norm.

    ``cosine`` ranks by the inner product of unit vectors (higher is closer). ``euclidean`` ranks by the
    distance between the original, un-normalised vectors (lower is closer), as seeds 002 and 004 do; it
    is computed from the same product as ``|q|^2 + |x|^2 - 2 |q||x| cos``.
    """

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)
        self.vectors = np.empty((0, self.dim), dtype=np.float32)
        self.norms = np.empty((0,), dtype=np.float32)
        self.ids = np.empty((0,), dtype=np.int64)
        self._fp16: fp16.Fp16Scorer | None = None  # lazily built float16 copy for single queries (_fp16_shortlister)

    def __len__(self) -> int:
        return len(self.ids)

    def _check(self, vectors: np.ndarray, what: str) -> np.ndarray:
        return check_vectors(vectors, self.dim, what)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add raw vectors (normalised here) under the given ids (which must be new)."""
        vectors = self._check(vectors, "vectors")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(vectors):
            raise LookalikeError(f"{len(vectors)} vectors but {len(ids)} ids")
        if np.intersect1d(ids, self.ids).size or len(np.unique(ids)) != len(ids):
            raise LookalikeError("ids must be unique and not already in the index")
        unit, norms = l2_normalize(vectors)
        self._fp16 = None
        if len(self.ids) == 0:  # the common first add: no second copy of a large array
            self.vectors, self.norms, self.ids = unit, norms, ids.copy()
            return
        self.vectors = np.concatenate([self.vectors, unit])
        self.norms = np.concatenate([self.norms, norms])
        self.ids = np.concatenate([self.ids, ids])

    def remove(self, ids: np.ndarray) -> int:
        """Remove entries by id; returns how many were removed."""
        keep = ~np.isin(self.ids, np.asarray(ids, dtype=np.int64))
        removed = int((~keep).sum())
        self.vectors, self.norms, self.ids = self.vectors[keep], self.norms[keep], self.ids[keep]
        self._fp16 = None
        return removed

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The original (un-normalised) vectors of the given ids."""
        rows = self.rows_of(ids)
        return self.vectors[rows] * self.norms[rows, None]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of ids (KeyError-free: raises LookalikeError for unknown ids)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        order = np.argsort(self.ids, kind="stable")
        pos = np.searchsorted(self.ids, ids, sorter=order)
        pos = np.minimum(pos, len(order) - 1) if len(order) else pos
        if not len(order) or np.any(self.ids[order[pos]] != ids):
            missing = ids[~np.isin(ids, self.ids)]
            raise LookalikeError(f"no entry with id {int(missing[0])} in the index")
        return order[pos]

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        metric: str = "cosine",
        exclude: np.ndarray | None = None,
        chunk: int = 256,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest entries of each query.

        Args:
            queries: raw float32 query vectors ``(n, d)`` (normalised here for cosine).
            k: results per query.
            metric: ``cosine`` (similarity, descending) or ``euclidean`` (distance, ascending).
            exclude: per query, one id to leave out (its own entry), or -1.
            chunk: queries per matrix product (bounds memory to ``chunk x len(index)`` floats).

        Returns:
            ``(scores, ids)``, both ``(n, k)``; missing results have id -1 and score -inf (cosine) or
            +inf (euclidean).
        """
        queries, exclude = check_search(queries, k, metric, exclude, self.dim)
        n = len(queries)
        q_unit, q_norm = l2_normalize(queries)
        exclude_rows = None
        if exclude is not None:
            exclude_rows = np.full(n, -1, dtype=np.int64)
            present = np.isin(exclude, self.ids)
            if present.any():
                exclude_rows[present] = self.rows_of(exclude[present])
        worst = -np.inf if metric == "cosine" else np.inf
        out_scores = np.full((n, k), worst, dtype=np.float32)
        out_ids = np.full((n, k), -1, dtype=np.int64)
        kk = min(k, len(self.ids))
        if kk == 0:
            return out_scores, out_ids
        shortlist = self._fp16_shortlister(n, kk, metric)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            rows_block = None if exclude_rows is None else exclude_rows[start:stop]
            part = top = None
            if shortlist is not None:
                part, top = self._shortlisted(shortlist, q_unit[start], kk, rows_block)
            if part is None:
                part, top = self._exact_block(q_unit[start:stop], q_norm[start:stop], kk, metric, rows_block)
            valid = np.isfinite(top)
            scores = top if metric == "cosine" else -top
            out_scores[start:stop, :kk] = np.where(valid, scores, worst)
            out_ids[start:stop, :kk] = np.where(valid, self.ids[part], -1)
        return out_scores, out_ids

    def _exact_block(
        self, q_unit: np.ndarray, q_norm: np.ndarray, kk: int, metric: str, exclude_rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and keys (higher is better) of the exact top ``kk`` for a block of queries."""
        # (c, N) as a view of the (N, c) product: the same numbers as ``q_unit @ vectors.T`` (the same
        # dot products, summed in the same order), a third faster with the stored vectors as BLAS's
        # left operand, and laid out for the top-k selection below (one query per column).
        sims = (self.vectors @ q_unit.T).T
        if metric == "cosine":
            keyed = sims
        else:
            qn = q_norm[:, None]
            d2 = qn**2 + self.norms[None, :] ** 2 - 2.0 * qn * self.norms[None, :] * sims
            keyed = -np.sqrt(np.maximum(d2, 0.0))
        if exclude_rows is not None:
            has = np.flatnonzero(exclude_rows >= 0)
            keyed[has, exclude_rows[has]] = -np.inf
        if kk < keyed.shape[1]:
            part = self._sampled_top(keyed, kk)
            if part is None:
                part = self._partitioned_top(keyed, kk)
        else:
            part = np.broadcast_to(np.arange(keyed.shape[1]), (len(keyed), keyed.shape[1]))
        top = np.take_along_axis(keyed, part, axis=1)
        if metric == "euclidean":
            # |q|^2 + |x|^2 - 2|q||x|cos cancels catastrophically for near neighbours (an image against
            # itself gives 1e-3, not 0): recompute the kept distances from the vectors themselves.
            q_raw = q_unit * q_norm[:, None]
            for r in range(len(part)):  # one (kk, d) block at a time: memory stays at one query's results
                exact = np.linalg.norm(self.vectors[part[r]] * self.norms[part[r], None] - q_raw[r], axis=1)
                top[r] = np.where(np.isfinite(top[r]), -exact, top[r])
        order = np.lexsort((self.ids[part], -top), axis=1)  # best first, ties by id
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)

    # ----------------------------------------------------------------------------------- top k
    # The top kk of each row of a (c, N) key matrix, exact, ties by id. Usually through a sample: the
    # kk-th best key of every SAMPLE_STEP-th column can be no better than the row's kk-th best, so the
    # entries at least as good as it hold the whole top kk (ties at the cut included); one compare over
    # the matrix finds them (about kk x SAMPLE_STEP a row) and a sort of those few by (key, id) settles
    # the order. That costs a quarter of a full argpartition and makes no copy of the matrix.
    SAMPLE_STEP = 16
    SAMPLE_MIN_COLUMNS = 256  # at least kk x this many columns: about kk x SAMPLE_STEP candidates is a 16th
    SAMPLE_MAX_CANDIDATES = 1 / 8  # share of the matrix beyond which the candidates cost more than a partition

    def _sampled_top(self, keyed: np.ndarray, kk: int) -> np.ndarray | None:
        """Columns of the best ``kk`` keys of each row, best first, ties by id; None when the sample does not
        pay (a small matrix, a row with NaN keys, or too many entries tied or above the sample's cut)."""
        c, n = keyed.shape
        if n < kk * self.SAMPLE_MIN_COLUMNS:
            return None
        by_entry = keyed.T  # (N, c): contiguous as _exact_block makes it; one query per column
        if not by_entry.flags.c_contiguous:
            by_entry = np.ascontiguousarray(by_entry)
        sample = by_entry[:: self.SAMPLE_STEP]
        m = len(sample)
        cut = np.partition(sample, m - kk, axis=0)[m - kk]  # kk-th best of each query's sample: a lower bound
        hits = np.flatnonzero(by_entry >= cut)  # every entry at least as good (NaN never is)
        if hits.size > self.SAMPLE_MAX_CANDIDATES * keyed.size:
            return None
        cols, rows = np.divmod(hits, c)  # (entry, query) of each candidate
        counts = np.bincount(rows, minlength=c)
        if counts.min() < kk:  # NaN keys for a query: no sample bound
            return None
        order = np.lexsort((self.ids[cols], -by_entry.ravel()[hits], rows))  # by query, best first, ties by id
        starts = np.concatenate(([0], np.cumsum(counts[:-1])))
        return cols[order][starts[:, None] + np.arange(kk)]

    def _partitioned_top(self, keyed: np.ndarray, kk: int) -> np.ndarray:
        """Columns of the best ``kk`` keys of each row (any order) by a full argpartition, ties by id."""
        part = np.argpartition(-keyed, kk - 1, axis=1)[:, :kk]
        # argpartition picks arbitrarily among entries tied with the k-th best; where it left a
        # tied entry out, redo that row so ties are settled by id (smallest first).
        picked = np.take_along_axis(keyed, part, axis=1)
        cut = picked.min(axis=1)
        tied = (keyed == cut[:, None]).sum(axis=1) > (picked == cut[:, None]).sum(axis=1)
        for r in np.flatnonzero(tied):
            cand = np.flatnonzero(keyed[r] >= cut[r])
            part[r] = cand[np.lexsort((self.ids[cand], -keyed[r, cand]))[:kk]]
        return part

    # ------------------------------------------------------------------------- fp16 shortlist
    # A single cosine query over a large index is memory-bound: it streams every vector once. The
    # shortlist reads a float16 copy instead (half the bytes; see fp16.py for the engines), then
    # re-scores the best SHORTLIST_EXTRA + k candidates exactly in float32. The result is provably the
    # exact top k: the scorer bounds how far float16 rounding can move any score (``scorer.error``), so
    # no vector outside the shortlist can beat the k-th re-scored candidate when that one is more than
    # that bound above the shortlist's cut-off; otherwise the query falls back to the full float32 product.
    SHORTLIST_MIN_ROWS = 4096  # smaller indexes are searched in full
    SHORTLIST_EXTRA = 64  # candidates re-scored beyond k

    def uses_shortlist(self, n_queries: int, k: int, metric: str) -> bool:
        """Whether :meth:`search` will answer through the float16 shortlist (torch's or faiss's threads)
        rather than a float32 BLAS product (OpenBLAS threads); callers sharing the cores can plan around it."""
        return (
            metric == "cosine"
            and n_queries == 1
            and len(self.ids) >= self.SHORTLIST_MIN_ROWS
            and min(k, len(self.ids)) + self.SHORTLIST_EXTRA + 1 < len(self.ids) // 4
            and fp16.available()
        )

    def _fp16_shortlister(self, n_queries: int, kk: int, metric: str) -> fp16.Fp16Scorer | None:
        """The float16 scorer for single cosine queries over a large index, or None."""
        if not self.uses_shortlist(n_queries, kk, metric):
            return None
        if self._fp16 is None:
            self._fp16 = fp16.make_scorer(self.vectors)
        return self._fp16

    def _shortlisted(
        self, shortlist: fp16.Fp16Scorer, q: np.ndarray, kk: int, exclude_rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """Exact top ``kk`` of one query from a float16 shortlist, or (None, None) when not provable."""
        approx, cand = shortlist.top(q, kk + self.SHORTLIST_EXTRA + 1)
        exact = self.vectors[cand] @ q
        if exclude_rows is not None and exclude_rows[0] >= 0:
            exact[cand == exclude_rows[0]] = -np.inf
        order = np.lexsort((self.ids[cand], -exact))[:kk]
        if not exact[order[-1]] > approx[-1] + shortlist.error:
            return None, None
        return cand[order][None, :], exact[order][None, :]

    # ------------------------------------------------------------------------------------------- files
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``vectors.npy``, ``norms.npy`` and ``ids.npy`` into ``directory`` (which must be a new,
        temporary folder: the caller renames the whole folder into place)."""
        directory = Path(directory)
        np.save(directory / "vectors.npy", self.vectors, allow_pickle=False)
        np.save(directory / "norms.npy", self.norms, allow_pickle=False)
        np.save(directory / "ids.npy", self.ids, allow_pickle=False)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], mmap: bool = False) -> ExactIndex:
        """Read what :meth:`save` wrote; ``mmap=True`` maps the vectors instead of reading them."""
        directory = Path(directory)
        try:
            vectors = np.load(directory / "vectors.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            norms = np.load(directory / "norms.npy", allow_pickle=False)
            ids = np.load(directory / "ids.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise LookalikeError(f"{directory}: unreadable index vectors ({exc})") from None
        if vectors.ndim != 2 or len(vectors) != len(ids) or len(norms) != len(ids):
            raise LookalikeError(f"{directory}: index vectors, norms and ids disagree in length")
        index = cls(vectors.shape[1])
        index.vectors, index.norms, index.ids = vectors, norms.astype(np.float32), ids.astype(np.int64)
        return index
