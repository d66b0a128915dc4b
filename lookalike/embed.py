"""Batched encoding of image files into vectors.

Files are decoded by DataLoader workers while the main process runs the encoder under
``torch.inference_mode`` on batches; unreadable files are dropped and reported, never abort the run.
:func:`iter_embedded` yields batch by batch (indexing writes them out in shards as they come);
:func:`embed_files` collects everything.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._callbacks import emit
from .data import image_loader
from .models import Model, torch_threads

logger = logging.getLogger(__name__)


@dataclass
class EmbedResult:
    """Vectors of the files that could be read, in input order."""

    vectors: np.ndarray  # raw float32 embeddings (m, d) of the readable files
    positions: np.ndarray  # int64 (m,): position of each vector's file in the input list
    digests: list[str]  # sha256 of each readable file's bytes
    failures: list[tuple[Path, str]] = field(default_factory=list)  # unreadable files and why
    seconds: float = 0.0  # wall-clock time of the whole run


@dataclass
class EmbeddedBatch:
    """One batch of :func:`iter_embedded`: the readable files' vectors and the unreadable files."""

    positions: list[int]  # positions in the input list of the files in ``vectors``
    vectors: np.ndarray  # raw float32 embeddings (len(positions), d)
    digests: list[str]  # sha256 of each of those files' bytes
    failures: list[tuple[int, str]]  # (position, reason) of files that could not be read


def iter_embedded(
    model: Model,
    paths: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int = 256,
    num_workers: int = 1,
    with_hash: bool = True,
    encode: Callable[[torch.Tensor], np.ndarray] | None = None,
    callbacks: Sequence[Any] = (),
) -> Iterator[EmbeddedBatch]:
    """Embed image files batch by batch, in input order: only one batch of pixels and vectors at a time.

    Args and callbacks as :func:`embed_files`, and:
        with_hash: also hash each file (``digests``; empty strings without).
        encode: what each batch's prepared uint8 pixels ``(n, C, S, S)`` become instead of
            ``model.embed_pixels``: any array whose first axis is the batch's images (e.g. the features of
            augmented views, :func:`lookalike.adaptation.embed_views`).
    """
    if encode is None:
        encode = functools.partial(model.embed_pixels, batch_size=batch_size)
    loader = image_loader(
        paths, model.preprocessing, batch_size=batch_size, num_workers=num_workers, with_hash=with_hash
    )
    # Decoding workers get cores of their own: the encoder takes what is left, so the two don't fight.
    threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - loader.num_workers))
    done = 0
    emit(callbacks, "on_embed", 0, len(paths))  # the clock of a progress bar starts now, not after a batch
    with torch_threads(threads):
        for batch in loader:
            if batch.indices:
                vectors = encode(batch.pixels)
            else:
                vectors = np.empty((0, model.embedding_dim), dtype=np.float32)
            for i, reason in batch.failures:
                emit(callbacks, "on_skip", Path(paths[i]), reason)
            done += len(batch.indices) + len(batch.failures)
            yield EmbeddedBatch(list(batch.indices), vectors, [d or "" for d in batch.digests], list(batch.failures))
            emit(callbacks, "on_embed", done, len(paths))


def embed_files(
    model: Model,
    paths: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int = 256,
    num_workers: int = 1,
    callbacks: Sequence[Any] = (),
) -> EmbedResult:
    """Embed image files with ``model``, keeping every vector in memory (see :func:`iter_embedded` to stream).

    Args:
        model: the model whose encoder (and preprocessing) to use.
        paths: image files.
        batch_size: images per forward pass.
        num_workers: DataLoader processes decoding images (0: decode in this process).
        callbacks: objects with optional ``on_embed(done, total)`` and ``on_skip(path, reason)``.

    Returns:
        An :class:`EmbedResult`; ``failures`` lists the files that were skipped, with the reason.
    """
    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    vectors = np.empty((len(paths), model.embedding_dim), dtype=np.float32)
    positions: list[int] = []
    digests: list[str] = []
    failures: list[tuple[Path, str]] = []
    for batch in iter_embedded(model, paths, batch_size=batch_size, num_workers=num_workers, callbacks=callbacks):
        m = len(positions)
        vectors[m : m + len(batch.positions)] = batch.vectors
        positions.extend(batch.positions)
        digests.extend(batch.digests)
        failures.extend((paths[i], reason) for i, reason in batch.failures)
    return EmbedResult(
        vectors[: len(positions)], np.asarray(positions, dtype=np.int64), digests, failures, time.perf_counter() - t0
    )
