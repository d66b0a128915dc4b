"""The search engine behind the server: one loaded index, one worker thread, batched queries.

Every search runs on a single worker thread, so the model's forward pass and torch's thread settings
are never touched by two threads at once. Requests that arrive while a search is running wait in a
queue; when the worker is free it takes all of them (up to ``max_batch``) and answers them with one
call of :meth:`lookalike.search.Index.search_batch` per (metric, exclude-self) group, so under load
the cost of a query falls instead of the queue growing. A query alone is answered at once, as
``Index.search`` would answer it. A query may name the index it asks (``index=``): when the server reloads
an updated index folder, the queries that came before the swap finish on the index they started with.

The worker computes with a fixed number of threads (torch's encoder, set around each batch, and the BLAS
product, capped process-wide through threadpoolctl from :meth:`SearchEngine.start` to
:meth:`SearchEngine.stop`): every usable core but one by default, one on a 2-core machine. The remaining
core belongs to the event loop, which parses requests, decodes uploads and writes JSON meanwhile;
multi-threaded encoders and BLAS products that have to share their cores with it (and with anything else
on the machine) spend more time waiting for each other at their barriers than computing (the encoder on
a batch of 17 uploads: 9 ms on one thread, 20-280 ms on two contended ones here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import LookalikeError
from ..models import torch_threads
from ..models.model import restore_blas_threads, set_blas_threads

if TYPE_CHECKING:  # pragma: no cover
    from ..search import Hit, Index
    from .telemetry import Metrics

logger = logging.getLogger(__name__)


def default_threads() -> int:
    """Compute threads for the search worker: the usable cores but one (for the event loop), at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def limit_blas_threads(n: int) -> list[tuple[Any, int]]:
    """Cap the BLAS libraries loaded now (numpy's OpenBLAS, faiss's) at ``n`` threads, process-wide, until
    :func:`lookalike.models.model.restore_blas_threads` of the returned value."""
    return set_blas_threads(n, rescan=True)


@dataclass
class _Job:
    query: Any  # a decoded Pillow image or an indexed id
    index: Index  # the index that answers it
    k: int
    metric: str
    exclude_self: bool
    future: asyncio.Future = field(repr=False)


class SearchEngine:
    """Runs searches on one worker thread, batching the queries that wait.

    Call :meth:`start` inside the running event loop (the app's lifespan) and :meth:`stop` at shutdown.

    Args:
        index: the loaded index.
        max_batch: the most queries answered by one call of the index.
        metrics: where batch sizes are recorded, if anywhere.
        threads: compute threads of the worker (torch and BLAS); None for :func:`default_threads`.
    """

    def __init__(
        self, index: Index, *, max_batch: int = 32, metrics: Metrics | None = None, threads: int | None = None
    ) -> None:
        self.index = index
        self.max_batch = max_batch
        self.metrics = metrics
        self.threads = default_threads() if threads is None else max(1, int(threads))
        self._blas_limit: Any = None
        self._blas_limit_worker: list[Any] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookalike-search")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self.searches = 0

    # ---------------------------------------------------------------------------------- lifecycle
    async def start(self, warm_up: bool = True) -> None:
        loop = asyncio.get_running_loop()
        # On this thread and on the search thread: OpenBLAS (0.3.31 here) ignores set_num_threads from other
        # threads once the main thread has called it, while some builds keep a count per thread.
        self._blas_limit = limit_blas_threads(self.threads)
        self._blas_limit_worker = await loop.run_in_executor(self._executor, limit_blas_threads, self.threads)
        if warm_up:
            await loop.run_in_executor(self._executor, self._warm_up)
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="lookalike-search-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(LookalikeError("the server is shutting down"))
        if self._blas_limit_worker:
            with contextlib.suppress(RuntimeError):  # an executor already shut down
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, restore_blas_threads, self._blas_limit_worker
                )
        self._blas_limit_worker = []
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._blas_limit is not None:
            restore_blas_threads(self._blas_limit)
            self._blas_limit = None

    async def warm_up(self, index: Index) -> None:
        """Warm up another index (a reloaded one) on the worker thread, between two batches."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._warm_up, index)

    def _warm_up(self, index: Index | None = None) -> None:
        """One image search and one id search, so one-time set-up (tracing, the float16 copy of the
        vectors, thread pools) happens before the first request."""
        import numpy as np
        from PIL import Image

        index = self.index if index is None else index
        if not index.entries:
            return
        t0 = time.perf_counter()
        prep = index.model.preprocessing
        shape = (prep.image_size, prep.image_size, 3) if prep.channels == 3 else (prep.image_size, prep.image_size)
        blank = Image.fromarray(np.full(shape, 128, np.uint8))
        first = next(iter(index.entries))
        with torch_threads(self.threads):
            index.search(blank, k=10)
            index.search(first, k=10)
            index.search_batch([first, first], k=10)
        logger.info("warmed up in %.2f s", time.perf_counter() - t0)

    # ------------------------------------------------------------------------------------- search
    async def search(
        self, query: Any, k: int, *, metric: str = "cosine", exclude_self: bool = False, index: Index | None = None
    ) -> list[Hit]:
        """The hits of one query (a decoded image or an indexed id), searched on the worker thread in
        ``index`` (default: the engine's own)."""
        if self._queue is None:
            raise RuntimeError("SearchEngine.start() was not called")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(query, self.index if index is None else index, k, metric, exclude_self, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            jobs = [j for j in jobs if not j.future.done()]  # the client went away
            if not jobs:
                continue
            if self.metrics is not None:
                self.metrics.observe_batch(len(jobs))
            try:
                outcomes = await loop.run_in_executor(self._executor, self._answer, jobs)
            except asyncio.CancelledError:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(LookalikeError("the server is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
                outcomes = [exc] * len(jobs)
            for job, outcome in zip(jobs, outcomes):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _answer(self, jobs: Sequence[_Job]) -> list[Any]:
        """On the worker thread: the hits (or the error) of each job, batched by metric and exclusion."""
        with torch_threads(self.threads):
            return self._answer_groups(jobs)

    def _answer_groups(self, jobs: Sequence[_Job]) -> list[Any]:
        out: list[Any] = [None] * len(jobs)
        groups: dict[tuple[int, str, bool], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((id(job.index), job.metric, job.exclude_self), []).append(i)
        for (_, metric, exclude_self), members in groups.items():
            kmax = max(jobs[i].k for i in members)
            index = jobs[members[0]].index
            try:
                results = index.search_batch(
                    [jobs[i].query for i in members], kmax, metric=metric, exclude_self=exclude_self
                )
            except Exception:  # noqa: BLE001 - one bad query must not fail the others: answer one by one
                results = [self._one(jobs[i]) for i in members]
            for i, hits in zip(members, results):
                out[i] = hits[: jobs[i].k] if isinstance(hits, list) else hits
        self.searches += len(jobs)
        return out

    def _one(self, job: _Job) -> Any:
        try:
            return job.index.search(job.query, job.k, metric=job.metric, exclude_self=job.exclude_self)
        except Exception as exc:  # noqa: BLE001
            return exc
