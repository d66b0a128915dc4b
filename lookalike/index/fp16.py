"""float16 copies of an index's unit vectors that score one query at half the memory traffic.

A single cosine query over a large index is memory-bound: it streams every stored vector once. A
scorer holds a float16 copy (half the bytes) and returns the best ``n`` rows by approximate score, with
a proven bound on how far any approximate score can be from the float32 one; :class:`ExactIndex` then
re-scores that shortlist exactly. Two engines, tried in this order:

* ``torch``: one float16 ``F.linear`` (oneDNN, float32 accumulation, all of torch's threads). Fastest
  here (0.5 ms for 10,000 x 1,000 against 1.0 ms for faiss). torch is imported lazily, only when an
  index is large enough to use a shortlist; a self-check at construction rejects a build whose float16
  product is less accurate than the bound assumes.
* ``faiss``: ``IndexScalarQuantizer(QT_fp16)`` (stored vectors rounded, the query kept in float32).

Neither is needed for correctness: without both, every search is the full float32 product.
"""

from __future__ import annotations

import functools
from typing import Protocol

import numpy as np

_U = 2.0**-11  # unit round-off of float16 (10 explicit mantissa bits, round to nearest)
_U32 = 2.0**-24  # unit round-off of float32


class Fp16Scorer(Protocol):
    """Approximate inner products with a float16 copy of unit vectors."""

    engine: str  # "torch" or "faiss"
    error: float  # proven bound on |approximate - exact| score for a unit query

    def top(self, q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best rows for the unit float32 query ``q``: ``(approximate scores, rows)``, best first."""
        ...


@functools.cache
def _faiss():
    """The faiss module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@functools.cache
def _torch():
    """The torch module, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def rounding_bound(dim: int, query_rounded: bool, output_rounded: bool) -> float:
    """Bound on ``|s_hat - s|`` for unit vectors rounded to float16 and a float32-accumulated product.

    Rounding ``x_i`` (and ``q_i``) moves each product by at most ``2u|q_i x_i|`` (``u|q_i x_i|``
    when only the stored vector is rounded), and ``sum |q_i x_i| <= |q||x| = 1``; float16 subnormals add at
    most ``2^-25`` absolute per component; float32 summation of ``d`` terms at most ``d 2^-24``; a float16
    result at most ``u |s| <= u``. Every term is rounded up generously.
    """
    inputs = (2 * _U + _U * _U) if query_rounded else _U
    subnormals = dim * 2.0**-25 * (2 if query_rounded else 1)
    summation = dim * _U32
    output = _U if output_rounded else 0.0
    return float(inputs + subnormals + summation + output) * 1.05


class TorchFp16Scorer:
    """float16 copy as a torch tensor; one ``F.linear`` per query (oneDNN accumulates in float32)."""

    engine = "torch"

    def __init__(self, vectors: np.ndarray) -> None:
        torch = _torch()
        self._torch = torch
        self._weights = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(torch.float16)
        self.error = rounding_bound(vectors.shape[1], query_rounded=True, output_rounded=True)

    def _scores(self, q: np.ndarray):
        torch = self._torch
        query = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(torch.float16)[None, :]
        return torch.nn.functional.linear(query, self._weights)[0].float()

    def top(self, q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        with self._torch.inference_mode():
            values, rows = self._torch.topk(self._scores(q), n)
        return values.numpy(), rows.numpy().astype(np.int64)

    def agrees_with(self, vectors: np.ndarray, probes: int = 4) -> bool:
        """Whether this build's float16 product stays well inside :attr:`error` for a few stored rows as queries."""
        rng = np.random.default_rng(0)
        for r in rng.choice(len(vectors), size=min(probes, len(vectors)), replace=False):
            q = np.asarray(vectors[r], dtype=np.float32)
            with self._torch.inference_mode():
                approx = self._scores(q).numpy()
            if not np.all(np.abs(approx - np.asarray(vectors, dtype=np.float32) @ q) <= self.error / 4):
                return False
        return True


class FaissFp16Scorer:
    """faiss scalar quantizer (``QT_fp16``): stored vectors in float16, the query and sums in float32."""

    engine = "faiss"

    def __init__(self, vectors: np.ndarray) -> None:
        faiss = _faiss()
        self._index = faiss.IndexScalarQuantizer(
            vectors.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.error = rounding_bound(vectors.shape[1], query_rounded=False, output_rounded=False)

    def top(self, q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self._index.search(np.ascontiguousarray(q, dtype=np.float32)[None, :], n)
        return scores[0], rows[0].astype(np.int64)


def available() -> bool:
    """Whether any float16 engine can be imported."""
    return _torch() is not None or _faiss() is not None


def make_scorer(vectors: np.ndarray) -> Fp16Scorer | None:
    """The fastest trustworthy float16 scorer of these unit vectors, or None when none is installed."""
    if _torch() is not None:
        scorer = TorchFp16Scorer(vectors)
        if scorer.agrees_with(vectors):
            return scorer
    if _faiss() is not None:
        return FaissFp16Scorer(vectors)
    return None
