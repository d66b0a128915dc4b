"""Retrieval metrics: how well a ranking by embedding similarity finds images of the same label.

numpy only. :func:`evaluate_vectors` ranks a database for every query and scores the rankings; an item
is *relevant* to a query when it has the query's label.

Definitions (per query; ``M`` is the number of candidates, the database less the query's own entry when
one is excluded, ``R`` the number of relevant candidates, ``rel_i`` 1 when the item at rank ``i`` is
relevant, ``hits(k)`` the relevant items among the first ``k`` and ``k' = min(k, M)``):

- **ranking**: by score, best first (cosine similarity descending, or euclidean distance ascending);
  equal scores are ordered by database row, lowest first, so every result is deterministic.
- **precision@k** ``= hits(k') / k'``. A ``k`` beyond the database is clamped to ``M``, so
  precision@k never counts results that cannot exist.
- **recall@k** ``= hits(k') / R``: the share of the query's relevant items found in the first ``k``.
- **AP@k** (average precision over the first ``k`` results) ``= sum_{i <= k'} precision@i * rel_i / hits(k')``,
  and 0 when ``hits(k') = 0``: the average of precision@i over the relevant items retrieved in the first
  ``k'``, the mAP@k of the image-hashing/retrieval literature and of this project's benchmark protocol
  (mAP@1000). With this normalisation ``AP@k`` equals the full AP when ``k >= M`` (then
  ``hits(k') = R``). Unlike the variant normalised by ``min(k, R)``, which counts relevant items missing
  from the first ``k`` as misses, it scores only the order of the hits that were retrieved, so it is never
  lower than that variant and equals it only when ``hits(k') = min(k, R)`` or ``hits(k') = 0``.
  **mAP@k** is its mean over queries.
- **AP** (full) ``= (1 / R) * sum_j j / rank_j`` over the ``R`` relevant items, ``rank_j`` being the rank
  of the ``j``-th of them: average precision over the whole ranked database. It equals
  ``sklearn.metrics.average_precision_score(relevant, scores)`` when no two scores are equal
  (scikit-learn gives tied scores one shared threshold instead of ordering them by row). **mAP** is its
  mean over queries.
- **k-NN accuracy**: the share of queries whose label wins a majority vote of their ``min(k, M)`` nearest
  neighbours. A tie between labels goes to the tied label of the best-ranked neighbour (so a 1-NN vote
  is the nearest neighbour's label). scikit-learn's ``KNeighborsClassifier`` breaks such ties by the
  smallest label instead; without ties the two agree.
- **chance precision** ``= R / M``: the expected precision of a random ranking (precision@M), the
  baseline the numbers above should beat.

A query with no relevant candidate (its label has no other member in the database, as happens to a
class of one image in a leave-one-out evaluation) has no defined recall or AP. Such queries are left
out of **every** mean (precision and k-NN accuracy included, so all numbers describe the same queries)
and counted in :attr:`EvaluationResult.n_no_relevant`. Every mean is over
:attr:`EvaluationResult.n_evaluated` queries; with none, the metrics are NaN.

The work is done in chunks of queries: one float32 matrix product per chunk, then one sort per query
row, so memory is bounded by ``chunk_size x len(database)`` (about 20 bytes per cell at the peak) and
never by ``queries x database``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import LookalikeError

METRICS = ("cosine", "euclidean")
DEFAULT_KS = (1, 5, 10, 20, 100, 1000)
CHUNK_CELLS = 1 << 22  # default chunk: about this many (query, database item) cells at a time

_WORST = np.uint64(0xFFFF_FFFF_0000_0000)  # or-ed into an excluded item's sort key: after every real one
_LOW = 0 if sys.byteorder == "little" else 1  # which uint32 half of a uint64 holds its low bits


@dataclass
class EvaluationResult:
    """The retrieval metrics of one evaluation; every mean is over the :attr:`n_evaluated` queries.

    See the module docstring for the exact definitions.
    """

    metric: str  # "cosine" or "euclidean": how the database was ranked
    n_database: int  # database items the queries were ranked against
    n_queries: int  # queries given
    n_evaluated: int  # queries with at least one relevant candidate: every mean is over these
    n_no_relevant: int  # queries left out: no other database item has their label
    ks: tuple[int, ...]  # the k of precision_at_k and recall_at_k
    precision_at_k: dict[int, float]  # k -> mean precision@k
    recall_at_k: dict[int, float]  # k -> mean recall@k
    map_k: int  # the k of map_at_k
    map_at_k: float  # mean AP@map_k (normalised by the relevant items in the first map_k)
    mean_average_precision: float  # mean AP over the whole ranked database
    knn_k: int  # neighbours in the k-NN vote
    knn_accuracy: float  # share of queries whose k-NN majority vote gives their label
    chance_precision: float  # mean R / M: the expected precision of a random ranking (precision@M)
    precision_curve: np.ndarray  # mean precision@k for k = 1, 2, ..., min(max(ks), n_database)
    query_average_precision: np.ndarray  # per query: full AP, NaN for a query left out (not in to_dict)
    query_knn_correct: np.ndarray  # per query: the k-NN vote was right (False when left out; not in to_dict)
    seconds: float = 0.0  # wall-clock time of the evaluation
    info: dict[str, Any] = field(default_factory=dict)  # context from the caller (JSON-ready), kept in to_dict
    query_labels: list[Any] | None = None  # per query: its label as given (not in to_dict)
    query_keys: list[Any] | None = None  # per query: what it is (Index.evaluate: an id or a path; not in to_dict)
    query_ap_at_k: np.ndarray | None = None  # per query: AP@map_k, NaN for a query left out (not in to_dict)
    query_precision_at_k: np.ndarray | None = None  # (queries, len(ks)): precision@k per query, NaN when left out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the summary (NaN becomes None; per-query arrays are left out)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "metric": self.metric,
            "n_database": self.n_database,
            "n_queries": self.n_queries,
            "n_evaluated": self.n_evaluated,
            "n_no_relevant": self.n_no_relevant,
            "map_k": self.map_k,
            "map_at_k": num(self.map_at_k),
            "mean_average_precision": num(self.mean_average_precision),
            "knn_k": self.knn_k,
            "knn_accuracy": num(self.knn_accuracy),
            "chance_precision": num(self.chance_precision),
            "precision_at_k": {str(k): num(v) for k, v in self.precision_at_k.items()},
            "recall_at_k": {str(k): num(v) for k, v in self.recall_at_k.items()},
            "precision_curve": [num(v) for v in self.precision_curve.tolist()],
            "seconds": round(self.seconds, 3),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluationResult:
        """Rebuild a summary written by :meth:`to_dict` (without the per-query arrays), e.g. to plot it."""

        def num(x: float | None) -> float:
            return math.nan if x is None else float(x)

        return cls(
            metric=d["metric"],
            n_database=int(d["n_database"]),
            n_queries=int(d["n_queries"]),
            n_evaluated=int(d["n_evaluated"]),
            n_no_relevant=int(d["n_no_relevant"]),
            ks=tuple(int(k) for k in d["precision_at_k"]),
            precision_at_k={int(k): num(v) for k, v in d["precision_at_k"].items()},
            recall_at_k={int(k): num(v) for k, v in d["recall_at_k"].items()},
            map_k=int(d["map_k"]),
            map_at_k=num(d["map_at_k"]),
            mean_average_precision=num(d["mean_average_precision"]),
            knn_k=int(d["knn_k"]),
            knn_accuracy=num(d["knn_accuracy"]),
            chance_precision=num(d["chance_precision"]),
            precision_curve=np.array([num(v) for v in d["precision_curve"]], dtype=np.float64),
            query_average_precision=np.empty(0),
            query_knn_correct=np.empty(0, dtype=bool),
            seconds=float(d.get("seconds", 0.0)),
            info=dict(d.get("info", {})),
        )


# ------------------------------------------------------------------------------------------ helpers
def _matrix(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] == 0:
        raise LookalikeError(f"{what} must be a non-empty (n, d) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise LookalikeError(f"{what} hold NaN or infinite values")
    return a


def _unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(a, axis=1)
    return a / np.where(norms > 0, norms, np.float32(1.0))[:, None]


def _sort_keys(values: np.ndarray, descending: bool) -> np.ndarray:
    """float32 -> uint32 whose ascending order is the order of ``values`` (reversed when ``descending``).

    Works in place: ``values`` (float32, C-contiguous) is overwritten and returned viewed as uint32.
    """
    values += np.float32(0.0)  # -0.0 becomes +0.0: one key per value
    bits = values.view(np.int32)
    flip = bits >> 31  # all ones for negative values, zero otherwise
    flip |= np.int32(-(2**31))  # ... and the sign bit for all: negatives are inverted, positives offset
    if descending:
        np.invert(flip, out=flip)
    bits ^= flip
    return bits.view(np.uint32)


def _check_ks(ks: Iterable[int], name: str) -> tuple[int, ...]:
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 1:
        raise LookalikeError(f"{name} must be at least 1, got {list(ks)}")
    return tuple(out)


def _vote(top: np.ndarray, pad: int) -> np.ndarray:
    """Majority label of each row of neighbour labels (best first); ties go to the best-ranked neighbour.

    ``pad`` marks an empty slot. Returns -1 for a row without neighbours.
    """
    c, kk = top.shape
    key = top.astype(np.int64) * kk + np.arange(kk)  # label, then rank: each label's first slot leads its group
    key.sort(axis=1)
    label, first = key // kk, key % kk
    flat = (label + np.arange(c)[:, None] * (pad + 1)).ravel()
    start = np.ones(flat.size, dtype=bool)
    start[1:] = flat[1:] != flat[:-1]
    counts = np.bincount(np.cumsum(start) - 1)
    g_row, g_label = np.divmod(flat[start], pad + 1)
    g_first = first.ravel()[start]
    keep = g_label != pad
    g_row, g_label, g_first, counts = g_row[keep], g_label[keep], g_first[keep], counts[keep]
    order = np.lexsort((g_first, -counts, g_row))  # per row: most votes, then best-ranked first
    g_row = g_row[order]
    lead = np.ones(len(order), dtype=bool)
    lead[1:] = g_row[1:] != g_row[:-1]
    pred = np.full(c, -1, dtype=np.int64)
    pred[g_row[lead]] = g_label[order][lead]
    return pred


def _rank_block(
    keys: np.ndarray,
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    exclude: np.ndarray,
    ks: np.ndarray,
    map_k: int,
    knn_k: int,
    curve_len: int,
    pad: int,
) -> dict[str, np.ndarray]:
    """Rank a block of queries (uint32 sort keys, ascending = better) and score the rankings."""
    c, n = keys.shape
    order = keys.astype(np.uint64)
    order <<= np.uint64(32)
    order |= np.arange(n, dtype=np.uint64)  # key, then database row: ties go to the lower row
    has_ex = np.flatnonzero(exclude >= 0)
    order[has_ex, exclude[has_ex]] |= _WORST  # no finite score has the all-ones key
    order.sort(axis=1)
    rows_sorted = order.view(np.uint32).reshape(c, n, 2)[:, :, _LOW]  # database rows, best first
    ranked = db_codes[rows_sorted]
    del order, rows_sorted
    rel = ranked == q_codes[:, None]
    rel[has_ex, n - 1] = False  # the excluded entry, sorted last
    m = np.full(c, n, dtype=np.int64)
    m[has_ex] -= 1
    r = np.count_nonzero(rel, axis=1)
    qrow, pos = np.nonzero(rel)
    del rel
    rank = pos + 1
    j = np.arange(1, len(qrow) + 1) - np.repeat(np.cumsum(r) - r, r)  # j-th relevant item of its query
    prec = j / rank
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.bincount(qrow, weights=prec, minlength=c) / r
        top = rank <= map_k
        hits_k = np.bincount(qrow[top], minlength=c)  # relevant items among the first map_k
        ap_k = np.bincount(qrow[top], weights=prec[top], minlength=c) / np.maximum(hits_k, 1)  # 0 without hits
    hits = np.stack([np.bincount(qrow[rank <= k], minlength=c) for k in ks], axis=1)  # (c, len(ks))
    top = rank <= curve_len
    hist = np.bincount(qrow[top] * curve_len + pos[top], minlength=c * curve_len).reshape(c, curve_len)
    curve_k = np.arange(1, curve_len + 1)
    curve = (np.cumsum(hist, axis=1) / np.minimum(curve_k[None, :], m[:, None]))[r > 0].sum(axis=0)
    kk = min(knn_k, n)
    neighbours = ranked[:, :kk].astype(np.int64)
    if kk == n:
        neighbours[has_ex, n - 1] = pad
    pred = _vote(neighbours, pad)
    return {"r": r, "m": m, "ap": ap, "ap_k": ap_k, "hits": hits, "curve": curve, "knn": pred == q_codes}


# ---------------------------------------------------------------------------------------- evaluate
def check_options(ks: Iterable[int], map_at: int, knn_k: int, metric: str) -> tuple[tuple[int, ...], int, int]:
    """Validate the options of :func:`evaluate_vectors` (before any slow work): ``(ks, map_at, knn_k)``.

    Raises:
        LookalikeError: an unknown metric or a k below 1.
    """
    if metric not in METRICS:
        raise LookalikeError(f"unknown metric {metric!r} (use cosine or euclidean)")
    return _check_ks(ks, "ks"), _check_ks([map_at], "map_at")[0], _check_ks([knn_k], "knn_k")[0]


def evaluate_vectors(
    db_vectors: np.ndarray,
    db_labels: Any,
    query_vectors: np.ndarray | None = None,
    query_labels: Any = None,
    *,
    ks: Iterable[int] = DEFAULT_KS,
    map_at: int = 1000,
    knn_k: int = 20,
    metric: str = "cosine",
    exclude: np.ndarray | None = None,
    chunk_size: int | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Rank the database for every query and compute the retrieval metrics (relevant = same label).

    Args:
        db_vectors: raw ``(N, d)`` database embeddings.
        db_labels: ``N`` labels (strings or integers).
        query_vectors: raw ``(n, d)`` query embeddings; None evaluates the database against itself,
            leaving each query's own entry out (leave-one-out).
        query_labels: ``n`` labels, comparable with ``db_labels`` (required with ``query_vectors``).
        ks: the k of precision@k and recall@k (a k beyond the database is clamped; see the module docstring).
        map_at: the k of mAP@k.
        knn_k: neighbours in the k-NN majority vote.
        metric: ``cosine`` (similarity of L2-normalised vectors, higher is closer) or ``euclidean``
            (distance between the raw vectors, lower is closer).
        exclude: per query, the database row to leave out of its ranking (its own entry), or -1 for
            none. Defaults to leave-one-out when ``query_vectors`` is None, to no exclusion otherwise.
        chunk_size: queries ranked at a time (bounds memory to about ``20 x chunk_size x N`` bytes);
            None picks about 4 million cells.
        threads: threads sorting the rows of a chunk (None: the CPU count, at most 4).
        progress: called as ``progress(done, total)`` after every chunk of queries.

    Returns:
        An :class:`EvaluationResult`.

    Raises:
        LookalikeError: inconsistent shapes or lengths, NaN vectors, an unknown metric, a k below 1.
    """
    t0 = time.perf_counter()
    ks, map_k, knn_k = check_options(ks, map_at, knn_k, metric)
    db = _matrix(db_vectors, "database vectors")
    n_db = len(db)
    db_labels = np.asarray(db_labels)
    if db_labels.shape != (n_db,):
        raise LookalikeError(f"{n_db} database vectors but {db_labels.size} labels")
    if query_vectors is None:
        if query_labels is not None:
            raise LookalikeError("query_labels given without query_vectors")
        queries, query_labels = db, db_labels
        if exclude is None:
            exclude = np.arange(n_db)
    else:
        queries = _matrix(query_vectors, "query vectors")
        if queries.shape[1] != db.shape[1]:
            raise LookalikeError(f"queries are {queries.shape[1]}-d but the database is {db.shape[1]}-d")
        query_labels = np.asarray(query_labels)
        if query_labels.shape != (len(queries),):
            raise LookalikeError(f"{len(queries)} query vectors but {query_labels.size} labels")
    n_q = len(queries)
    if exclude is None:
        exclude = np.full(n_q, -1, dtype=np.int64)
    exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
    if len(exclude) != n_q:
        raise LookalikeError(f"exclude has {len(exclude)} rows for {n_q} queries")
    if exclude.size and (exclude.min() < -1 or exclude.max() >= n_db):
        raise LookalikeError(f"exclude must hold database rows (0 to {n_db - 1}) or -1")
    if any(lab is None for lab in np.concatenate([db_labels.ravel(), query_labels.ravel()]).tolist()):
        raise LookalikeError("labels must not be None (leave unlabelled items out)")
    try:
        names, codes = np.unique(np.concatenate([db_labels, query_labels]), return_inverse=True)
    except TypeError as exc:
        raise LookalikeError(f"labels cannot be compared ({exc})") from None
    codes = codes.reshape(-1).astype(np.int32)
    db_codes, q_codes = codes[:n_db], codes[n_db:]
    pad = len(names)

    if metric == "cosine":
        db_m = _unit(db)
        q_m = db_m if query_vectors is None else _unit(queries)
        db_sq = q_sq = None
    else:
        db_m, q_m = db, queries
        db_sq = np.einsum("ij,ij->i", db, db)
        q_sq = db_sq if query_vectors is None else np.einsum("ij,ij->i", queries, queries)
    if chunk_size is None:
        chunk_size = max(1, CHUNK_CELLS // n_db)
    if chunk_size < 1:
        raise LookalikeError(f"chunk_size must be at least 1, got {chunk_size}")
    threads = threads or min(4, os.cpu_count() or 1)
    curve_len = min(ks[-1], n_db)
    ks_arr = np.array(ks)

    ap = np.full(n_q, np.nan)
    ap_at_k = np.full(n_q, np.nan)
    q_prec = np.full((n_q, len(ks)), np.nan)
    knn_ok = np.zeros(n_q, dtype=bool)
    sums = {"ap": 0.0, "ap_k": 0.0, "knn": 0, "n": 0, "chance": 0.0}
    prec_sum = np.zeros(len(ks))
    rec_sum = np.zeros(len(ks))
    curve_sum = np.zeros(curve_len)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, n_q, chunk_size):
            stop = min(n_q, start + chunk_size)
            scores = q_m[start:stop] @ db_m.T  # (c, N): the only chunk x database matrix of floats
            if metric == "cosine":
                keys = _sort_keys(scores, descending=True)
            else:
                scores *= -2.0
                scores += q_sq[start:stop, None]
                scores += db_sq[None, :]
                np.maximum(scores, 0.0, out=scores)
                keys = _sort_keys(scores, descending=False)
            del scores
            bounds = np.linspace(0, stop - start, min(threads, stop - start) + 1).astype(int)
            parts = [
                pool.submit(
                    _rank_block,
                    keys[a:b],
                    q_codes[start + a : start + b],
                    db_codes,
                    exclude[start + a : start + b],
                    ks_arr,
                    map_k,
                    knn_k,
                    curve_len,
                    pad,
                )
                for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())
            ]
            del keys
            offset = start
            for job in parts:
                part = job.result()
                c = len(part["r"])
                ok = part["r"] > 0
                ap[offset : offset + c][ok] = part["ap"][ok]
                ap_at_k[offset : offset + c][ok] = part["ap_k"][ok]
                knn_ok[offset : offset + c] = part["knn"] & ok
                sums["ap"] += float(part["ap"][ok].sum())
                sums["ap_k"] += float(part["ap_k"][ok].sum())
                sums["knn"] += int(part["knn"][ok].sum())
                sums["n"] += int(ok.sum())
                sums["chance"] += float((part["r"][ok] / part["m"][ok]).sum())
                hits = part["hits"][ok]
                precision = hits / np.minimum(ks_arr[None, :], part["m"][ok, None])
                q_prec[offset : offset + c][ok] = precision
                prec_sum += precision.sum(axis=0)
                rec_sum += (hits / part["r"][ok, None]).sum(axis=0)
                curve_sum += part["curve"]
                offset += c
            if progress is not None:
                progress(stop, n_q)

    n_ev = sums["n"]

    def mean(total: Any) -> Any:
        return total / n_ev if n_ev else total * math.nan

    prec, rec = mean(prec_sum), mean(rec_sum)
    return EvaluationResult(
        metric=metric,
        n_database=n_db,
        n_queries=n_q,
        n_evaluated=n_ev,
        n_no_relevant=n_q - n_ev,
        ks=ks,
        precision_at_k={k: float(v) for k, v in zip(ks, prec)},
        recall_at_k={k: float(v) for k, v in zip(ks, rec)},
        map_k=map_k,
        map_at_k=float(mean(sums["ap_k"])),
        mean_average_precision=float(mean(sums["ap"])),
        knn_k=knn_k,
        knn_accuracy=float(mean(float(sums["knn"]))),
        chance_precision=float(mean(sums["chance"])),
        precision_curve=mean(curve_sum),
        query_average_precision=ap,
        query_knn_correct=knn_ok,
        seconds=time.perf_counter() - t0,
        query_labels=query_labels.tolist(),
        query_ap_at_k=ap_at_k,
        query_precision_at_k=q_prec,
    )
