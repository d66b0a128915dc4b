"""The thread plan of a search (``Index.query_threads``): a few queries run on one thread end to end unless
the machine is idle, a big batch on the process's settings, and torch's and BLAS's process-wide thread
counts are restored after, whatever happens. Nothing here is timed: what is checked is which thread counts
the work saw (the machine's load is stubbed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import lookalike.search
from lookalike.catalog import CatalogEntry
from lookalike.errors import LookalikeError
from lookalike.index import ExactIndex, fp16
from lookalike.models import Model, blas_threads, compute_threads
from lookalike.search import SMALL_QUERY_BATCH, Index, _OtherLoad


def _index(rows: int, dim: int = 64) -> Index:
    """An in-memory index of ``rows`` seeded vectors with a small untrained model's embedding size."""
    model = Model.from_preset("default", image_size=16, latent_dim=dim)
    rng = np.random.default_rng(0)
    vectors = ExactIndex(model.embedding_dim)
    vectors.add(rng.standard_normal((rows, model.embedding_dim)).astype(np.float32), np.arange(rows))
    entries = [CatalogEntry(i, f"c{i % 3}/{i:05d}.png", 0, 0, "", f"c{i % 3}") for i in range(rows)]
    return Index(model, vectors, entries, Path("/nonexistent-root"), {"format": "test"})


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for _ in range(n)]


def _settings() -> tuple[int, list[int]]:
    return torch.get_num_threads(), blas_threads()


@pytest.fixture
def two_threads():
    """torch and BLAS at two threads for the test (even under OMP_NUM_THREADS=1), restored after."""
    with compute_threads(2):
        yield _settings()


@pytest.fixture(autouse=True)
def busy_machine(monkeypatch):
    """Another process keeps a core busy (the plan's load reading, stubbed; tests may switch it)."""
    load = {"idle": False}
    monkeypatch.setattr(lookalike.search._OTHER_LOAD, "idle", lambda: load["idle"])
    return load


@pytest.fixture(params=[200, 5000], ids=["float32-product", "float16-shortlist"])
def index(request) -> Index:
    return _index(request.param)


def _spy(monkeypatch, index: Index) -> dict[str, list]:
    """Record the (torch, BLAS) thread counts the encoder and the vector search run with."""
    seen: dict[str, list] = {"encode": [], "search": []}
    real_embed, real_search = index.model.embed_pixels, index.searcher.search

    def embed_pixels(*args, **kwargs):
        seen["encode"].append(_settings())
        return real_embed(*args, **kwargs)

    def search(*args, **kwargs):
        seen["search"].append(_settings())
        return real_search(*args, **kwargs)

    monkeypatch.setattr(index.model, "embed_pixels", embed_pixels)
    monkeypatch.setattr(index.searcher, "search", search)
    return seen


def test_the_plan(busy_machine) -> None:
    assert Index.query_threads(1) == 1
    assert Index.query_threads(SMALL_QUERY_BATCH) == 1
    assert Index.query_threads(SMALL_QUERY_BATCH + 1) is None  # a big batch keeps the process's settings
    busy_machine["idle"] = True
    assert Index.query_threads(1) is None  # an idle machine lends the query every thread


def test_the_load_reading(monkeypatch) -> None:
    readings = iter([10.0, 10.5, 11.4])  # machine busy seconds; this process used none of it
    monkeypatch.setattr(_OtherLoad, "_busy_seconds", staticmethod(lambda: next(readings)))
    clock = iter([100.0, 101.0, 101.05, 102.0, 102.01])
    load = _OtherLoad(window=0.1)
    load.clock, load.own_cpu_seconds = lambda: next(clock), lambda: 1.0
    assert load.others() is None  # one reading: unknown
    assert load.others() == pytest.approx(0.5)  # 0.5 busy seconds in one second
    assert load.others() == pytest.approx(0.5)  # within the window: the last estimate, /proc/stat not read
    assert load.others() == pytest.approx(0.9) and not load.idle()
    monkeypatch.setattr(_OtherLoad, "_busy_seconds", staticmethod(lambda: None))
    unknown = _OtherLoad()
    assert unknown.others() is None and not unknown.idle()  # no /proc/stat: never idle (one thread)


@pytest.mark.parametrize("idle", [False, True], ids=["busy-machine", "idle-machine"])
def test_a_single_query_runs_on_the_planned_thread_count_and_restores_the_settings(
    index, two_threads, monkeypatch, busy_machine, idle
) -> None:
    busy_machine["idle"] = idle
    # the two paths of a single query: a float32 BLAS product, or torch's float16 shortlist when installed
    assert index.vectors.uses_shortlist(1, 5, "cosine") == (len(index) >= 4096 and fp16.available())
    seen = _spy(monkeypatch, index)
    planned = Index.query_threads(1)
    hits = index.search(_images(1)[0], k=5)
    assert len(hits) == 5
    expected = two_threads if planned is None else (planned, [planned] * len(two_threads[1]))
    assert planned == (None if idle else 1)
    assert seen["encode"] == [expected] and seen["search"] == [expected]
    assert _settings() == two_threads  # torch's and BLAS's process-wide settings restored


def test_a_few_queries_by_id_and_image_share_the_plan(index, two_threads, monkeypatch) -> None:
    seen = _spy(monkeypatch, index)
    queries = [3, *_images(SMALL_QUERY_BATCH - 1)]
    out = index.search_batch(queries, k=4, exclude_self=True)
    assert len(out) == SMALL_QUERY_BATCH and all(len(h) == 4 for h in out)
    assert 3 not in [h.id for h in out[0]]
    one = (1, [1] * len(two_threads[1]))
    assert seen["encode"] == [one] and seen["search"] == [one]
    assert _settings() == two_threads


def test_a_big_batch_keeps_the_process_settings(index, two_threads, monkeypatch) -> None:
    seen = _spy(monkeypatch, index)
    index.search_batch(_images(SMALL_QUERY_BATCH + 1), k=3)
    assert seen["encode"] == [two_threads] and seen["search"] == [two_threads]
    assert _settings() == two_threads


def test_settings_are_restored_when_a_query_fails(index, two_threads) -> None:
    with pytest.raises(LookalikeError, match="no image with id"):
        index.search_batch([_images(1)[0], 10**9], k=3)
    assert _settings() == two_threads


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_results_do_not_depend_on_the_plan(index, two_threads, monkeypatch, metric) -> None:
    """The planned single-thread search returns exactly what the process's own threads return."""
    queries = [0, *_images(3)]
    planned = [index.search_batch([q], k=7, metric=metric) for q in queries] + [
        index.search_batch(queries, k=7, metric=metric)
    ]
    monkeypatch.setattr(Index, "query_threads", staticmethod(lambda n: None))
    unplanned = [index.search_batch([q], k=7, metric=metric) for q in queries] + [
        index.search_batch(queries, k=7, metric=metric)
    ]
    assert planned == unplanned  # the same ids and the same float scores
    # ... and the ranking is the brute-force one
    unit = index.vectors.vectors
    for q, hits in zip(queries, planned[: len(queries)]):
        raw = index._embed_queries([q])[0][0].astype(np.float64)
        if metric == "cosine":
            key = -(unit.astype(np.float64) @ (raw / np.linalg.norm(raw)))
        else:
            key = np.linalg.norm(unit * index.vectors.norms[:, None] - raw, axis=1)
        assert [h.id for h in hits[0]] == index.vectors.ids[np.argsort(key, kind="stable")[:7]].tolist()


def test_compute_threads_restores_after_an_error(two_threads) -> None:
    with pytest.raises(RuntimeError), compute_threads(1):
        assert _settings() == (1, [1] * len(two_threads[1]))
        raise RuntimeError("boom")
    assert _settings() == two_threads
