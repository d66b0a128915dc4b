"""Vector indexes: one contract, numpy in and out.

An index stores L2-normalised float32 vectors with integer ids and answers ``search(queries, k)`` with
``(scores, ids)`` arrays of shape ``(n_queries, k)``, padded with id ``-1`` when fewer than ``k`` entries
qualify. torch appears only in ``fp16.py``, imported lazily, as one engine for a fast float16 shortlist.
"""

from .ann import HNSWIndex, IVFPQIndex, choose_backend, make_index  # faiss imported lazily, on first use
from .exact import ExactIndex, l2_normalize

__all__ = ["ExactIndex", "HNSWIndex", "IVFPQIndex", "choose_backend", "l2_normalize", "make_index"]
