"""Tests for lookalike.index.ann: the faiss HNSW and IVF-PQ backends against ExactIndex.

Data: 10,000 x 32 seeded vectors from 100 gaussian clusters with varied norms, 200 queries. Recall@10
measured (OMP_NUM_THREADS=1): HNSW cosine 1.000, euclidean 0.995; IVF-PQ defaults (auto nlist=200, m=8
codes of 8 bits, nprobe=32, sq8 re-ranking of 100 candidates) cosine 0.942, euclidean 0.971; IVF-PQ without
re-ranking (refine="none", m=8) cosine 0.506, euclidean 0.679. Thresholds sit below those with margin.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from lookalike.errors import LookalikeError  # noqa: E402
from lookalike.index.ann import (  # noqa: E402
    EXACT_MAX,
    HNSW_MAX,
    HNSWIndex,
    IVFPQIndex,
    choose_backend,
    make_index,
)
from lookalike.index.exact import ExactIndex  # noqa: E402

N, DIM, NQ, K = 10_000, 32, 200, 10


def clustered(n, q, dim=DIM, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(100, dim)) * 3
    x = (centres[rng.integers(0, 100, n)] + rng.normal(size=(n, dim))) * rng.uniform(0.5, 2, (n, 1))
    queries = centres[rng.integers(0, 100, q)] + rng.normal(size=(q, dim))
    ids = np.arange(n, dtype=np.int64) * 3 + 5  # not 0..n-1
    return x.astype(np.float32), queries.astype(np.float32), ids


def recall(got, want):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, want)]))


@pytest.fixture(scope="module")
def data():
    x, q, ids = clustered(N, NQ)
    exact = ExactIndex(DIM)
    exact.add(x, ids)
    return x, q, ids, exact


@pytest.fixture(scope="module")
def hnsw(data):
    x, _, ids, _ = data
    index = HNSWIndex(DIM)
    index.add(x, ids)
    return index


@pytest.fixture(scope="module")
def ivfpq(data):
    x, _, ids, _ = data
    index = IVFPQIndex(DIM)
    index.add(x, ids)  # trains here (>= 1000), nlist chosen from all N
    return index


@pytest.fixture(scope="module")
def ivfpq_plain(data):
    x, _, ids, _ = data
    index = IVFPQIndex(DIM, m=8, refine="none")
    index.add(x, ids)
    return index


def check_shapes(scores, ids, n, k):
    assert scores.shape == ids.shape == (n, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64


@pytest.mark.parametrize("metric,floor", [("cosine", 0.95), ("euclidean", 0.95)])
def test_hnsw_recall(data, hnsw, metric, floor):
    _, q, _, exact = data
    want_s, want = exact.search(q, K, metric=metric)
    got_s, got = hnsw.search(q, K, metric=metric)
    check_shapes(got_s, got, NQ, K)
    assert recall(got, want) >= floor
    # HNSW scores are exact for the ids it returns: the best score per query is never better than exact
    if metric == "cosine":
        assert np.all(got_s[:, 0] <= want_s[:, 0] + 1e-5)
        assert np.all(np.diff(got_s, axis=1) <= 1e-7)
    else:
        assert np.all(got_s[:, 0] >= want_s[:, 0] - 1e-4)
        assert np.all(np.diff(got_s, axis=1) >= -1e-7)


@pytest.mark.parametrize("metric,floor", [("cosine", 0.9), ("euclidean", 0.9)])
def test_ivfpq_recall(data, ivfpq, metric, floor):
    _, q, _, exact = data
    assert ivfpq.trained and len(ivfpq) == N and ivfpq.nlist == 200 and ivfpq.m == 8 and ivfpq.refine == "sq8"
    want_s, want = exact.search(q, K, metric=metric)
    got_s, got = ivfpq.search(q, K, metric=metric)
    check_shapes(got_s, got, NQ, K)
    assert recall(got, want) >= floor
    assert np.all(got >= 0)
    # re-ranked scores come from 8-bit codes: close to the exact scores of the same ids
    sq_s, _ = exact.search(q, N, metric=metric)  # every score, to look up the returned ids' exact ones
    _, all_ids = exact.search(q, N, metric=metric)
    for r in range(0, NQ, 37):
        true = dict(zip(all_ids[r], sq_s[r]))
        tol = 0.02 if metric == "cosine" else 0.05 * float(np.max(np.abs(sq_s[r])))
        assert all(abs(true[i] - s) <= tol for i, s in zip(got[r], got_s[r]))
    assert np.all(np.diff(got_s, axis=1) <= 1e-7) if metric == "cosine" else np.all(np.diff(got_s, axis=1) >= -1e-7)


@pytest.mark.parametrize("metric,floor", [("cosine", 0.45), ("euclidean", 0.55)])
def test_ivfpq_without_refine_recall(data, ivfpq_plain, metric, floor):
    _, q, _, exact = data
    assert ivfpq_plain.codes is None
    _, want = exact.search(q, K, metric=metric)
    got_s, got = ivfpq_plain.search(q, K, metric=metric)
    check_shapes(got_s, got, NQ, K)
    assert recall(got, want) >= floor


def test_memory_estimates(hnsw, ivfpq, ivfpq_plain):
    assert hnsw.memory_bytes() > N * DIM * 4  # holds float32 vectors plus links
    assert ivfpq.memory_bytes() < hnsw.memory_bytes() / 2  # 8 + 32 code bytes + 20 of ids, norms
    assert ivfpq_plain.memory_bytes() < hnsw.memory_bytes() / 4  # the point of PQ
    # 1M x 128-d with the defaults: 32 B of PQ + 128 B of sq8 + 20 B of ids and norms, under 200 MB
    big = IVFPQIndex(128)
    big.nlist, big.row_ids, big.codes = 2000, np.zeros(10**6, np.int64), np.zeros((1, 128), np.uint8)
    big._index = object()
    assert 180e6 < big.memory_bytes() < 185e6


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_padding_when_k_exceeds_len(metric):
    x, q, ids = clustered(5, 3)
    index = HNSWIndex(DIM)
    index.add(x, ids)
    scores, got = index.search(q, 8, metric=metric)
    check_shapes(scores, got, 3, 8)
    assert np.all(got[:, 5:] == -1) and np.all(np.sort(got[:, :5], axis=1) == np.sort(ids))
    worst = -np.inf if metric == "cosine" else np.inf
    assert np.all(scores[:, 5:] == worst) and np.all(np.isfinite(scores[:, :5]))
    # an empty index pads everything
    s, i = HNSWIndex(DIM).search(q, 4, metric=metric)
    assert np.all(i == -1) and np.all(s == worst)


def test_ivfpq_padding_after_removal():
    x, q, ids = clustered(1200, 4)
    index = IVFPQIndex(DIM, nlist=4)  # trains at max(1000, 39*4) = 1000 vectors
    index.add(x, ids)
    assert index.trained
    assert index.remove(ids[5:]) == 1195 and len(index) == 5
    scores, got = index.search(q, 10)
    assert np.all(got[:, 5:] == -1) and np.all(scores[:, 5:] == -np.inf)
    assert np.all(np.sort(got[:, :5], axis=1) == np.sort(ids[:5]))


@pytest.mark.parametrize("which", ["hnsw", "ivfpq", "ivfpq-plain"])
def test_exclude(data, hnsw, ivfpq, ivfpq_plain, which):
    x, _, ids, _ = data
    index = {"hnsw": hnsw, "ivfpq": ivfpq, "ivfpq-plain": ivfpq_plain}[which]
    rows = np.arange(0, N, 97)
    _, plain = index.search(x[rows], K)
    if which != "ivfpq-plain":
        assert np.mean(plain[:, 0] == ids[rows]) > 0.95  # a vector finds itself first
    _, got = index.search(x[rows], K, exclude=ids[rows])
    assert not np.any(got == ids[rows][:, None])
    assert np.all(got >= 0)  # over-fetched to still fill k
    with pytest.raises(LookalikeError, match="exclude has"):
        index.search(x[rows], K, exclude=ids[:2])


def test_hnsw_remove_tombstones_and_rebuild(data):
    x, q, ids, _ = data
    x, ids = x[:3000], ids[:3000]
    index = HNSWIndex(DIM, M=16, ef_construction=100)
    index.add(x, ids)
    gone = ids[::10]  # 10 %: tombstones only
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0  # already removed
    assert len(index) == 3000 - len(gone) and index.rebuilds == 0 and index.dead.sum() == len(gone)
    _, got = index.search(q, 50)
    assert not np.isin(got, gone).any() and np.all(got >= 0)
    _, got = index.search(q, 20, metric="euclidean")
    assert not np.isin(got, gone).any()
    more = np.concatenate([ids[1::10], ids[2::10][:1]])  # 601 of 3000 > 20 %: rebuilt
    assert index.remove(more[:-1]) == 300 and index.rebuilds == 0  # 600 tombstones: exactly 20 %, kept
    index.remove(more[-1:])
    assert index.rebuilds == 1 and not index.dead.any() and len(index.ids) == len(index)
    keep = ~np.isin(ids, np.concatenate([gone, more]))
    exact = ExactIndex(DIM)
    exact.add(x[keep], ids[keep])
    _, want = exact.search(q, K)
    _, got = index.search(q, K)
    assert not np.isin(got, np.concatenate([gone, more])).any()
    assert recall(got, want) >= 0.95
    with pytest.raises(LookalikeError, match="no entry"):
        index.reconstruct(gone[:1])
    # a removed id may be added again
    index.add(x[:1], gone[:1])
    np.testing.assert_allclose(index.reconstruct(gone[:1]), x[:1], rtol=1e-5, atol=1e-5)


def test_hnsw_reconstruct(data, hnsw):
    x, _, ids, _ = data
    np.testing.assert_allclose(hnsw.reconstruct(ids[[7, 3, 9000]]), x[[7, 3, 9000]], rtol=1e-5, atol=1e-5)
    assert list(hnsw.rows_of(ids[[9000, 7]])) == [9000, 7]


@pytest.mark.parametrize("refine", ["sq8", "none"])
def test_ivfpq_remove_native(data, refine):
    x, q, ids, _ = data
    index = IVFPQIndex(DIM, nlist=32, refine=refine)
    index.add(x[:2000], ids[:2000])
    _, before = index.search(q, K)
    gone = np.unique(before[:, :1])  # under 20 % of the rows: removed from the lists, rows not renumbered
    assert index.remove(gone) == len(gone) and len(index) == 2000 - len(gone)
    assert index.remove(gone) == 0  # already removed
    assert index._index.ntotal == len(index) and len(index.row_ids) == 2000  # rows kept: few removed
    _, after = index.search(q, K, metric="euclidean")
    assert not np.isin(after, gone).any() and np.all(after >= 0)
    approx = index.reconstruct(ids[[1500]])  # decoded from the sq8 (or PQ) codes
    assert approx.shape == (1, DIM)
    assert np.linalg.norm(approx - x[1500]) < (0.05 if refine == "sq8" else 0.5) * np.linalg.norm(x[1500])
    # past 20 % removed rows the rows are renumbered (lists, codes, norms) and answers stay right
    more = ids[:2000][~np.isin(ids[:2000], gone)][::3]
    assert index.remove(more) == len(more)
    assert len(index.row_ids) == len(index) == index._index.ntotal == 2000 - len(gone) - len(more)
    keep = ~np.isin(ids[:2000], np.concatenate([gone, more]))
    exact = ExactIndex(DIM)
    exact.add(x[:2000][keep], ids[:2000][keep])
    _, want = exact.search(q, K)
    _, got = index.search(q, K)
    assert not np.isin(got, np.concatenate([gone, more])).any()
    assert recall(got, want) >= (0.9 if refine == "sq8" else 0.4)
    row = np.flatnonzero(keep)[-1]
    err = np.linalg.norm(index.reconstruct(ids[[row]]) - x[row])
    assert err < (0.05 if refine == "sq8" else 0.5) * np.linalg.norm(x[row])
    # a removed id may be added again
    index.add(x[:1], gone[:1])
    assert len(index) == keep.sum() + 1 and gone[0] in index.ids


@pytest.mark.parametrize("which", ["hnsw", "ivfpq", "ivfpq-plain", "ivfpq-untrained"])
def test_save_load_round_trip(tmp_path, data, hnsw, ivfpq, ivfpq_plain, which):
    x, q, ids, _ = data
    if which == "ivfpq-untrained":
        index = IVFPQIndex(DIM)
        index.add(x[:300], ids[:300])
        assert not index.trained
    else:
        index = {"hnsw": hnsw, "ivfpq": ivfpq, "ivfpq-plain": ivfpq_plain}[which]
    cls = type(index)
    index.save(tmp_path)
    loaded = cls.load(tmp_path)
    assert len(loaded) == len(index)
    for metric in ("cosine", "euclidean"):
        a = index.search(q, K, metric=metric, exclude=ids[:NQ])
        b = loaded.search(q, K, metric=metric, exclude=ids[:NQ])
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    if which.startswith("ivfpq") and index.trained:
        assert (loaded.refine, loaded.m, loaded.nlist, loaded.nprobe) == (
            index.refine,
            index.m,
            index.nlist,
            index.nprobe,
        )
    (tmp_path / ("row_ids.npy" if which in ("ivfpq", "ivfpq-plain") else "ids.npy")).unlink()
    with pytest.raises(LookalikeError, match="unreadable"):
        cls.load(tmp_path)


def test_ivfpq_fallback_is_exact_until_trained(data):
    x, q, ids, exact_full = data
    index = IVFPQIndex(DIM)
    assert index.train_size() == 1000
    index.add(x[:999], ids[:999])
    assert not index.trained
    exact = ExactIndex(DIM)
    exact.add(x[:999], ids[:999])
    for metric in ("cosine", "euclidean"):
        a = index.search(q, K, metric=metric)
        b = exact.search(q, K, metric=metric)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    assert index.remove(ids[:10]) == 10 and len(index) == 989
    index.add(x[999:1011], ids[999:1011])  # reaches 1001 >= 1000: trains, moves everything over
    assert index.trained and len(index) == 1001 and index._index.ntotal == 1001
    assert index.nlist == max(1, min(int(2 * np.sqrt(1001)), 1001 // 39))
    index.add(x[1011:1100], ids[1011:1100])  # a plain add to a trained index
    assert len(index) == 1090 and index._index.ntotal == 1090
    _, got = index.search(x[1011:1100], 1, exclude=ids[1011:1100])
    assert np.all(got >= 0) and not np.any(got[:, 0] == ids[1011:1100])
    assert IVFPQIndex(DIM, nlist=100).train_size() == 3900


@pytest.mark.parametrize("cls", [HNSWIndex, IVFPQIndex])
def test_errors(data, hnsw, ivfpq, cls):
    x, q, ids, _ = data
    index = hnsw if cls is HNSWIndex else ivfpq
    with pytest.raises(LookalikeError, match="32-d"):
        index.search(np.zeros((2, DIM + 1), np.float32), K)
    with pytest.raises(LookalikeError, match="32-d"):
        cls(DIM).add(np.zeros((2, DIM - 1), np.float32), [1, 2])
    with pytest.raises(LookalikeError, match="unknown metric"):
        index.search(q[:2], K, metric="manhattan")
    with pytest.raises(LookalikeError, match="k must be"):
        index.search(q[:2], 0)
    with pytest.raises(LookalikeError, match="unique"):
        index.add(x[:1], ids[:1])
    with pytest.raises(LookalikeError, match="ids"):
        cls(DIM).add(x[:2], [1])


def test_choose_backend_and_make_index():
    assert choose_backend(EXACT_MAX - 1, 128) == "exact"
    assert choose_backend(EXACT_MAX, 128) == "hnsw"
    assert choose_backend(HNSW_MAX - 1, 128) == "hnsw"
    assert choose_backend(HNSW_MAX, 128) == "ivfpq"
    assert choose_backend(600_000, 4096) == "ivfpq"  # 600k x 4096 floats exceed the 8 GiB budget
    assert choose_backend(500_000, 128, memory_budget=10**8) == "ivfpq"
    assert choose_backend(10, 8, requested="hnsw") == "hnsw"
    assert choose_backend(10**9, 8, requested="exact") == "exact"
    with pytest.raises(LookalikeError, match="exact, hnsw, ivfpq"):
        choose_backend(10, 8, requested="annoy")
    assert isinstance(make_index("exact", 8), ExactIndex)
    assert isinstance(make_index("hnsw", 8, M=8), HNSWIndex) and make_index("hnsw", 8, M=8).M == 8
    assert isinstance(make_index("ivfpq", 8, nprobe=4), IVFPQIndex)
    with pytest.raises(LookalikeError, match="exact, hnsw, ivfpq"):
        make_index("auto", 8)
    with pytest.raises(LookalikeError, match="must divide"):
        IVFPQIndex(30, m=7)
    with pytest.raises(LookalikeError, match="unknown ivfpq refine"):
        IVFPQIndex(32, refine="fp16")
    assert IVFPQIndex(128).m == 32 and IVFPQIndex(30).m == 6 and IVFPQIndex(128).nprobe == 32
