"""Tests for lookalike.index.exact: ExactIndex against brute force numpy, scipy and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from lookalike.errors import LookalikeError
from lookalike.index import fp16
from lookalike.index.exact import ExactIndex

DIM = 12


def make_data(n=60, q=9, seed=0):
    rng = np.random.default_rng(seed)
    # varied norms, so that euclidean and cosine rank differently
    vectors = (rng.normal(size=(n, DIM)) * rng.uniform(0.2, 5.0, size=(n, 1))).astype(np.float32)
    queries = (rng.normal(size=(q, DIM)) * rng.uniform(0.2, 5.0, size=(q, 1))).astype(np.float32)
    ids = (rng.permutation(10 * n)[:n] * 3 + 7).astype(np.int64)  # not 0..n-1, not sorted
    return vectors, queries, ids


def build(vectors, ids):
    index = ExactIndex(vectors.shape[1])
    index.add(vectors, ids)
    return index


def brute(vectors, ids, queries, k, metric):
    """Reference (scores, ids): float64, full sort, ties by id, padded like ExactIndex."""
    v = vectors.astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "cosine":
        vn = np.linalg.norm(v, axis=1, keepdims=True)
        qn = np.linalg.norm(q, axis=1, keepdims=True)
        scores = (q / np.where(qn > 0, qn, 1)) @ (v / np.where(vn > 0, vn, 1)).T
        key = -scores
    else:
        scores = cdist(q, v)
        key = scores
    out_s = np.full((len(q), k), -np.inf if metric == "cosine" else np.inf)
    out_i = np.full((len(q), k), -1, dtype=np.int64)
    for r in range(len(q)):
        order = np.lexsort((ids, key[r]))[:k]
        out_s[r, : len(order)] = scores[r, order]
        out_i[r, : len(order)] = ids[order]
    return out_s, out_i


def assert_matches(got, want, metric):
    (gs, gi), (ws, wi) = got, want
    assert gs.shape == ws.shape and gi.shape == wi.shape
    assert gi.dtype == np.int64
    np.testing.assert_array_equal(gi, wi)
    np.testing.assert_allclose(gs, ws, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
@pytest.mark.parametrize("k", [1, 5, 60])
def test_search_matches_brute_force(metric, chunk, k):
    vectors, queries, ids = make_data()
    index = build(vectors, ids)
    got = index.search(queries, k, metric=metric, chunk=chunk)
    assert_matches(got, brute(vectors, ids, queries, k, metric), metric)
    assert np.all(np.isfinite(got[0]))


def test_scores_are_cosine_similarity_and_true_distance():
    vectors, queries, ids = make_data(n=20, q=3)
    index = build(vectors, ids)
    s, i = index.search(queries, 20, metric="cosine")
    rows = {int(x): r for r, x in enumerate(ids)}
    for qi in range(3):
        for score, id_ in zip(s[qi], i[qi]):
            v, q = vectors[rows[int(id_)]], queries[qi]
            assert score == pytest.approx(float(v @ q / np.linalg.norm(v) / np.linalg.norm(q)), abs=1e-5)
        assert np.all(np.diff(s[qi]) <= 0)  # descending similarity
    d, i = index.search(queries, 20, metric="euclidean")
    for qi in range(3):
        for dist, id_ in zip(d[qi], i[qi]):
            assert dist == pytest.approx(float(np.linalg.norm(vectors[rows[int(id_)]] - queries[qi])), rel=1e-4)
        assert np.all(np.diff(d[qi]) >= 0)  # ascending distance
    # a query equal to an indexed vector finds it first, at distance ~0 / similarity ~1
    d, i = index.search(vectors[4], 1, metric="euclidean")
    assert i[0, 0] == ids[4] and d[0, 0] < 1e-2
    s, i = index.search(vectors[4], 1, metric="cosine")
    assert i[0, 0] == ids[4] and s[0, 0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("metric, pad", [("cosine", -np.inf), ("euclidean", np.inf)])
def test_k_larger_than_index_is_padded(metric, pad):
    vectors, queries, ids = make_data(n=6, q=4)
    index = build(vectors, ids)
    scores, got = index.search(queries, 10, metric=metric, chunk=3)
    assert scores.shape == (4, 10) and got.shape == (4, 10)
    assert np.all(got[:, 6:] == -1) and np.all(scores[:, 6:] == pad)
    assert np.all(np.isfinite(scores[:, :6]))
    assert all(sorted(row[:6]) == sorted(ids) for row in got)
    assert_matches((scores, got), brute(vectors, ids, queries, 10, metric), metric)


def test_empty_index_returns_only_padding():
    index = ExactIndex(DIM)
    scores, ids = index.search(np.ones((2, DIM), np.float32), 3)
    assert np.all(ids == -1) and np.all(scores == -np.inf)
    assert len(index) == 0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [3, 59, 60, 80])
def test_exclude_removes_only_the_own_id(metric, k):
    vectors, _, ids = make_data()
    index = build(vectors, ids)
    queries = vectors[:10]
    exclude = ids[:10].copy()
    exclude[3] = -1  # no exclusion for this query
    exclude[4] = 123456  # an id not in the index: nothing to exclude
    scores, got = index.search(queries, k, metric=metric, exclude=exclude, chunk=4)
    full_s, full_i = index.search(queries, k + 1, metric=metric)
    for r in range(10):
        if r in (3, 4):
            assert got[r, 0] == ids[r]
            np.testing.assert_array_equal(got[r], full_i[r, :k])
            continue
        assert ids[r] not in got[r]
        keep = full_i[r] != ids[r]
        np.testing.assert_array_equal(got[r], full_i[r][keep][:k])
        np.testing.assert_allclose(scores[r], full_s[r][keep][:k], rtol=1e-5)


def test_exclude_must_have_one_id_per_query():
    vectors, queries, ids = make_data()
    index = build(vectors, ids)
    with pytest.raises(LookalikeError, match="exclude"):
        index.search(queries, 3, exclude=ids[:2])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_remove_then_search(metric):
    vectors, queries, ids = make_data()
    index = build(vectors, ids)
    gone = ids[::3]
    assert index.remove(np.concatenate([gone, [999999]])) == len(gone)
    assert len(index) == len(ids) - len(gone)
    keep = ~np.isin(ids, gone)
    got = index.search(queries, 8, metric=metric, chunk=5)
    assert not np.isin(got[1], gone).any()
    assert_matches(got, brute(vectors[keep], ids[keep], queries, 8, metric), metric)
    assert index.remove(gone) == 0
    with pytest.raises(LookalikeError, match=str(gone[0])):
        index.reconstruct(gone[:1])
    # removed ids can be added again
    index.add(vectors[::3], gone)
    assert_matches(index.search(queries, 8, metric=metric), brute(vectors, ids, queries, 8, metric), metric)


def test_reconstruct_returns_raw_vectors():
    vectors, _, ids = make_data()
    index = build(vectors, ids)
    pick = [5, 0, 59, 5]
    np.testing.assert_allclose(index.reconstruct(ids[pick]), vectors[pick], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(index.reconstruct(ids[7]), vectors[7:8], rtol=1e-5, atol=1e-6)
    with pytest.raises(LookalikeError, match="no entry with id 4"):
        index.reconstruct([ids[0], 4])
    with pytest.raises(LookalikeError):
        ExactIndex(DIM).reconstruct([1])


def test_dimension_and_length_mismatches_are_errors():
    vectors, queries, ids = make_data()
    index = build(vectors, ids)
    with pytest.raises(LookalikeError, match=f"{DIM}-d"):
        index.add(np.ones((2, DIM + 1), np.float32), [1, 2])
    with pytest.raises(LookalikeError, match=f"{DIM}-d"):
        index.search(np.ones((2, DIM - 1), np.float32), 3)
    with pytest.raises(LookalikeError, match=f"{DIM}-d"):
        index.search(np.ones((2, 1, DIM), np.float32), 3)
    with pytest.raises(LookalikeError, match="ids"):
        index.add(np.ones((3, DIM), np.float32), [1, 2])
    with pytest.raises(LookalikeError, match="metric"):
        index.search(queries, 3, metric="manhattan")
    with pytest.raises(LookalikeError, match="k must"):
        index.search(queries, 0)
    assert len(index) == len(ids)
    # a single 1-d query is accepted
    one = index.search(queries[0], 4)
    np.testing.assert_array_equal(one[1], index.search(queries[:1], 4)[1])


def test_duplicate_ids_are_rejected_and_leave_the_index_unchanged():
    vectors, queries, ids = make_data()
    index = build(vectors, ids)
    before = index.search(queries, 5)
    with pytest.raises(LookalikeError, match="unique"):
        index.add(np.ones((2, DIM), np.float32), [1, 1])
    with pytest.raises(LookalikeError, match="unique"):
        index.add(np.ones((2, DIM), np.float32), [1, ids[10]])
    assert len(index) == len(ids)
    after = index.search(queries, 5)
    np.testing.assert_array_equal(before[1], after[1])
    with pytest.raises(LookalikeError):
        build(vectors[:3], np.array([4, 5, 4]))


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip(tmp_path, mmap):
    vectors, queries, ids = make_data()
    index = build(vectors, ids)
    index.save(tmp_path)
    loaded = ExactIndex.load(tmp_path, mmap=mmap)
    assert loaded.dim == DIM and len(loaded) == len(ids)
    assert isinstance(loaded.vectors, np.memmap) == mmap
    np.testing.assert_array_equal(loaded.ids, ids)
    np.testing.assert_allclose(loaded.reconstruct(ids), vectors, rtol=1e-5, atol=1e-6)
    for metric in ("cosine", "euclidean"):
        a, b = index.search(queries, 7, metric=metric), loaded.search(queries, 7, metric=metric)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    # a loaded (even memory-mapped) index can still change
    loaded.add(np.ones((1, DIM), np.float32), [1])
    assert loaded.remove(ids[:2]) == 2 and len(loaded) == len(ids) - 1


def test_load_missing_or_inconsistent_files(tmp_path):
    with pytest.raises(LookalikeError, match=str(tmp_path / "nothing")):
        ExactIndex.load(tmp_path / "nothing")
    vectors, _, ids = make_data()
    build(vectors, ids).save(tmp_path)
    np.save(tmp_path / "ids.npy", ids[:-1])
    with pytest.raises(LookalikeError, match="disagree"):
        ExactIndex.load(tmp_path)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk", [1, 256])
def test_ties_are_ordered_by_id(metric, chunk):
    rng = np.random.default_rng(1)
    base = rng.normal(size=DIM).astype(np.float32)
    others = rng.normal(size=(30, DIM)).astype(np.float32) * 10 + 50  # all far away
    vectors = np.concatenate([np.repeat(base[None], 12, axis=0), others])
    ids = np.concatenate([np.arange(112, 100, -1), np.arange(200, 230)])  # tied ids in descending rows
    order = rng.permutation(len(ids))
    index = build(vectors[order], ids[order])
    queries = np.stack([base, base * 2]) if metric == "cosine" else np.stack([base, base])
    for k in (1, 3, 12, 15):
        scores, got = index.search(queries, k, metric=metric, chunk=chunk)
        tied = min(k, 12)
        assert got[:, :tied].tolist() == [list(range(101, 101 + tied))] * 2
        assert np.all(scores[:, :tied] == scores[:, :1])
    # and the result does not depend on insertion order
    again = build(vectors, ids).search(queries, 5, metric=metric)
    np.testing.assert_array_equal(again[1], index.search(queries, 5, metric=metric)[1])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_zero_vectors_do_not_produce_nan(metric):
    vectors, queries, ids = make_data(n=10, q=2)
    vectors[3] = 0.0
    index = build(vectors, ids)
    queries = np.concatenate([queries, np.zeros((1, DIM), np.float32)])
    scores, got = index.search(queries, 10, metric=metric)
    assert not np.isnan(scores).any()
    assert np.all(got >= 0) and all(sorted(r) == sorted(ids) for r in got)
    assert_matches((scores, got), brute(vectors, ids, queries, 10, metric), metric)
    row = list(got[0]).index(ids[3])
    if metric == "cosine":
        assert scores[0, row] == 0.0
        assert np.all(scores[2] == 0.0)
        assert list(got[2]) == sorted(ids)  # all tied: by id
        assert list(index.search(queries[2], 3, metric=metric)[1][0]) == sorted(ids)[:3]
    else:
        assert scores[0, row] == pytest.approx(float(np.linalg.norm(queries[0])), rel=1e-5)
        np.testing.assert_allclose(np.sort(scores[2]), np.sort(np.linalg.norm(vectors, axis=1)), rtol=1e-5)
    np.testing.assert_array_equal(index.reconstruct(ids[3:4]), np.zeros((1, DIM)))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_agrees_with_sklearn_nearest_neighbors(metric):
    vectors, queries, ids = make_data(n=80, q=15, seed=3)
    nn = NearestNeighbors(n_neighbors=10, algorithm="brute", metric=metric).fit(vectors.astype(np.float64))
    dist, rows = nn.kneighbors(queries.astype(np.float64))
    scores, got = build(vectors, ids).search(queries, 10, metric=metric, chunk=4)
    np.testing.assert_array_equal(got, ids[rows])
    expected = 1.0 - dist if metric == "cosine" else dist
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)


def _brute_cosine(X: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, exclude: int = -1):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    s = Xn @ (q / np.linalg.norm(q))
    s[ids == exclude] = -np.inf
    order = np.lexsort((ids, -s))[:k]
    return s[order], ids[order]


ENGINES = [pytest.param(fp16.TorchFp16Scorer, id="torch"), pytest.param(fp16.FaissFp16Scorer, id="faiss")]


def _force_engine(monkeypatch: pytest.MonkeyPatch, engine: type) -> None:
    monkeypatch.setattr(fp16, "make_scorer", lambda vectors: engine(vectors))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dim", [16, 200])
def test_fp16_shortlist_gives_the_exact_answer(dim: int, engine: type, monkeypatch: pytest.MonkeyPatch) -> None:
    _force_engine(monkeypatch, engine)
    rng = np.random.default_rng(dim)
    X = rng.normal(size=(6000, dim)).astype(np.float32)
    ids = rng.permutation(60000)[:6000].astype(np.int64)
    index = ExactIndex(dim)
    index.add(X, ids)
    for trial in range(25):
        q = rng.normal(size=dim).astype(np.float32)
        exclude = int(ids[trial]) if trial % 2 else -1
        scores, got = index.search(q[None], 10, exclude=np.array([exclude]))
        ref_scores, ref_ids = _brute_cosine(X, ids, q, 10, exclude)
        assert got[0].tolist() == ref_ids.tolist()
        np.testing.assert_allclose(scores[0], ref_scores, rtol=1e-5, atol=1e-6)
    assert isinstance(index._fp16, engine)  # the shortlist path really ran, with this engine
    index.remove(ids[:10])
    assert index._fp16 is None  # and is rebuilt after the contents change


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["gaussian", "non-negative", "sparse"])
def test_fp16_scores_stay_inside_the_stated_error_bound(engine: type, kind: str) -> None:
    rng = np.random.default_rng(7)
    dim = 1000
    if kind == "gaussian":
        X = rng.normal(size=(3000, dim))
    elif kind == "non-negative":  # ReLU bottlenecks: every score near the top, the worst case for rounding
        X = rng.random((3000, dim))
    else:  # a few large components and many tiny ones (float16 subnormals)
        X = rng.normal(size=(3000, dim)) * (rng.random((3000, dim)) < 0.05) + rng.normal(scale=1e-5, size=(3000, dim))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    scorer = engine(X)
    assert scorer.error < 3e-3  # tight enough to prove most answers
    for r in range(20):
        q = X[r] + rng.normal(scale=0.05, size=dim).astype(np.float32)
        q /= np.linalg.norm(q)
        approx, rows = scorer.top(q, len(X))
        assert sorted(rows.tolist()) == list(range(len(X)))
        assert np.all(np.diff(approx) <= 0)  # best first
        assert np.max(np.abs(approx - X[rows] @ q)) <= scorer.error


def test_the_fastest_trustworthy_engine_is_chosen() -> None:
    X = np.random.default_rng(0).normal(size=(5000, 64)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    assert fp16.make_scorer(X).engine == "torch"


def test_a_torch_build_that_breaks_the_bound_is_not_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    X = np.random.default_rng(0).normal(size=(5000, 64)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    real = fp16.TorchFp16Scorer._scores
    monkeypatch.setattr(fp16.TorchFp16Scorer, "_scores", lambda self, q: real(self, q) + 0.01)  # a sloppy kernel
    assert fp16.make_scorer(X).engine == "faiss"


def test_fp16_shortlist_falls_back_when_it_cannot_prove_the_answer() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=32).astype(np.float32)
    X = (base + rng.normal(scale=3e-3, size=(5000, 32))).astype(np.float32)  # scores closer than fp16 noise
    ids = np.arange(5000, dtype=np.int64)[::-1].copy()
    index = ExactIndex(32)
    index.add(X, ids)
    q = base + rng.normal(scale=3e-3, size=32).astype(np.float32)
    assert index._shortlisted(index._fp16_shortlister(1, 5, "cosine"), q / np.linalg.norm(q), 5, None) == (None, None)
    scores, got = index.search(q[None], 5)
    ref_scores, ref_ids = _brute_cosine(X, ids, q, 5)
    assert got[0].tolist() == ref_ids.tolist()


def test_search_is_exact_without_faiss_or_torch(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_engines(name, *args, **kwargs):
        if name in ("faiss", "torch"):
            raise ImportError(f"no {name} here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_engines)
    for cached in (fp16._faiss, fp16._torch):
        cached.cache_clear()  # forget an engine found earlier in this test run
        request.addfinalizer(cached.cache_clear)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5000, 24)).astype(np.float32)
    index = ExactIndex(24)
    index.add(X, np.arange(5000))
    q = rng.normal(size=24).astype(np.float32)
    assert not index.uses_shortlist(1, 7, "cosine")
    _, got = index.search(q[None], 7)
    assert got[0].tolist() == _brute_cosine(X, np.arange(5000), q, 7)[1].tolist()
    assert index._fp16 is None


# ------------------------------------------------------------------------- sampled top k (big indexes)
def _reference_top(keyed: np.ndarray, ids: np.ndarray, kk: int) -> np.ndarray:
    """Columns of the best kk keys of each row, best first, ties by id: one full sort per row."""
    return np.stack([np.lexsort((ids, -row))[:kk] for row in keyed])


@pytest.mark.parametrize("c", [1, 3, 17])
@pytest.mark.parametrize("kk", [1, 10, 37])
@pytest.mark.parametrize("size", ["edge", "odd"])
def test_sampled_top_is_the_exact_top_with_ties_by_id(c: int, kk: int, size: str) -> None:
    rng = np.random.default_rng(kk * 100 + c)
    n = kk * ExactIndex.SAMPLE_MIN_COLUMNS * (1 if size == "edge" else 2) + (0 if size == "edge" else 13)
    index = ExactIndex(4)
    index.ids = rng.permutation(3 * n)[:n].astype(np.int64)  # unsorted ids: the order of rows is not the tie rule
    # each value about 4 times: entries tie with the k-th best, on both sides of the cut
    keyed = np.ascontiguousarray((rng.integers(0, n // 4, size=(n, c)) / 8).astype(np.float32).T)
    keyed[0, rng.choice(n, 3, replace=False)] = -np.inf  # excluded entries
    part = index._sampled_top(keyed, kk)
    assert part is not None  # the sampled path answered (no fallback)
    np.testing.assert_array_equal(part, _reference_top(keyed, index.ids, kk))
    # and the full partition agrees, up to order
    fallback = index._partitioned_top(np.ascontiguousarray(keyed), kk)
    np.testing.assert_array_equal(np.sort(fallback, axis=1), np.sort(part, axis=1))


def test_sampled_top_accepts_either_memory_layout() -> None:
    rng = np.random.default_rng(5)
    index = ExactIndex(4)
    index.ids = np.arange(2000, dtype=np.int64)[::-1].copy()
    keyed = rng.normal(size=(6, 2000)).astype(np.float32).round(2)
    want = _reference_top(keyed, index.ids, 7)
    np.testing.assert_array_equal(index._sampled_top(np.ascontiguousarray(keyed), 7), want)
    np.testing.assert_array_equal(index._sampled_top(np.asfortranarray(keyed), 7), want)


def test_sampled_top_declines_what_it_cannot_do_cheaply() -> None:
    index = ExactIndex(4)
    index.ids = np.arange(3000, dtype=np.int64)
    rng = np.random.default_rng(6)
    assert index._sampled_top(rng.normal(size=(2, 3000)).astype(np.float32), 12) is None  # too few columns
    assert index._sampled_top(np.zeros((2, 3000), np.float32), 10) is None  # all tied: every entry a candidate
    keyed = rng.normal(size=(2, 3000)).astype(np.float32)
    keyed[1, 5:] = np.nan  # 5 real keys for k = 10
    assert index._sampled_top(keyed, 10) is None


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk", [1, 5, 256])
def test_big_index_with_duplicates_matches_brute_force(metric: str, chunk: int) -> None:
    rng = np.random.default_rng(7)
    n = 12000  # enough for k = 45 to take the sampled path
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors[1000:1040] = vectors[7]  # 41 identical vectors: a tie across any k-th place
    vectors[2000:2020] = vectors[8] * 3  # same direction, other norm: tied for cosine only
    ids = (rng.permutation(n) * 5 + 11).astype(np.int64)
    index = build(vectors, ids)
    queries = np.concatenate([vectors[[7, 8]] * 1.5, rng.normal(size=(9, DIM)).astype(np.float32)])
    for k in (1, 10, 45):
        got = index.search(queries, k, metric=metric, chunk=chunk)
        want = brute(vectors, ids, queries, k, metric)
        np.testing.assert_array_equal(got[1][:, :k], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
    tied = index.search(vectors[7], 30, metric=metric)[1][0]
    assert tied.tolist() == sorted(ids[np.r_[7, 1000:1040]].tolist())[:30]  # ties settled by id


def test_big_index_search_uses_the_sampled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    vectors = rng.normal(size=(3000, DIM)).astype(np.float32)
    ids = np.arange(3000, dtype=np.int64)
    index = build(vectors, ids)

    def no_partition(*args: object) -> None:
        raise AssertionError("fell back to the full partition")

    monkeypatch.setattr(index, "_partitioned_top", no_partition)
    queries = rng.normal(size=(4, DIM)).astype(np.float32)
    got = index.search(queries, 10)
    assert_matches(got, brute(vectors, ids, queries, 10, "cosine"), "cosine")
