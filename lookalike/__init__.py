"""lookalike: learn what a folder of images looks like and find lookalikes.

The public API is re-exported here and imported lazily, so ``import lookalike`` does no work (torch is
loaded on first use):

- :func:`train` trains an autoencoder on a folder and returns a :class:`Model`;
- :class:`Index` builds, loads and searches an index (:meth:`Index.build`, :meth:`Index.load`,
  :meth:`Index.search` returning :class:`Hit` objects);
- :class:`Model` loads and saves model directories and embeds images;
- :func:`evaluate` (or :meth:`Index.evaluate`) measures retrieval quality (mAP, precision@k, recall@k,
  k-NN accuracy) and returns an :class:`EvaluationResult`; :func:`evaluate_vectors` does the same for any
  labelled embeddings;
- :meth:`Model.pretrained` gives ImageNet features (``efficientnet-lite0``, ``efficientnet-lite2``,
  ``vgg16-fc1``) as a model; :func:`register_extractor` plugs in any torch module; :func:`adapt` fits a head
  on the user's own images; :func:`compare` says which extractor retrieves best on a labelled folder;
- :class:`LookalikeError` is raised for every user-facing problem, with a one-line message.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ImageDecodeError, LookalikeError

if TYPE_CHECKING:  # pragma: no cover
    from .adaptation import adapt
    from .comparison import Comparison, compare
    from .config import Preprocessing, TrainConfig
    from .metrics import EvaluationResult, evaluate_vectors
    from .models import PRESETS, Model
    from .models.pretrained import register_extractor
    from .search import Hit, Index, evaluate
    from .training import train
    from .updates import UpdateSummary

__all__ = [
    "PRESETS",
    "Comparison",
    "EvaluationResult",
    "Hit",
    "ImageDecodeError",
    "Index",
    "LookalikeError",
    "Model",
    "Preprocessing",
    "TrainConfig",
    "UpdateSummary",
    "__version__",
    "adapt",
    "compare",
    "evaluate",
    "evaluate_vectors",
    "register_extractor",
    "train",
]

_LAZY = {
    "PRESETS": "lookalike.models",
    "Model": "lookalike.models",
    "Hit": "lookalike.search",
    "Index": "lookalike.search",
    "evaluate": "lookalike.search",
    "EvaluationResult": "lookalike.metrics",
    "evaluate_vectors": "lookalike.metrics",
    "train": "lookalike.training",
    "adapt": "lookalike.adaptation",
    "compare": "lookalike.comparison",
    "Comparison": "lookalike.comparison",
    "register_extractor": "lookalike.models.pretrained",
    "UpdateSummary": "lookalike.updates",
    "Preprocessing": "lookalike.config",
    "TrainConfig": "lookalike.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lookalike' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
