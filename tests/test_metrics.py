"""Retrieval metrics against a slow pure-Python reference, scikit-learn, and hand-worked examples."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from lookalike.errors import LookalikeError
from lookalike.metrics import EvaluationResult, _sort_keys, evaluate_vectors


# ------------------------------------------------------------------------------------ the reference
def reference(db, db_labels, queries, query_labels, *, ks, map_at, knn_k, metric, exclude):
    """Every metric from its definition, one query at a time, in float64 pure Python."""

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v] if n > 0 else list(v)

    db = [list(map(float, v)) for v in db]
    queries = [list(map(float, v)) for v in queries]
    per_query = []
    for qi, q in enumerate(queries):
        cands = [j for j in range(len(db)) if j != exclude[qi]]
        if metric == "cosine":
            uq = unit(q)
            score = {j: sum(a * b for a, b in zip(uq, unit(db[j]))) for j in cands}
            order = sorted(cands, key=lambda j: (-score[j], j))
        else:
            score = {j: math.sqrt(sum((a - b) ** 2 for a, b in zip(q, db[j]))) for j in cands}
            order = sorted(cands, key=lambda j: (score[j], j))
        rel = [1 if db_labels[j] == query_labels[qi] else 0 for j in order]
        n_rel, m = sum(rel), len(order)
        if n_rel == 0:
            per_query.append(None)
            continue

        def prec(k, rel=rel, m=m):
            kk = min(k, m)
            return sum(rel[:kk]) / kk

        ap = sum(prec(i + 1) for i in range(m) if rel[i]) / n_rel
        hits_k = sum(rel[: min(map_at, m)])  # AP@k: normalised by the relevant items in the first k
        ap_k = sum(prec(i + 1) for i in range(min(map_at, m)) if rel[i]) / hits_k if hits_k else 0.0
        top = [db_labels[j] for j in order[: min(knn_k, m)]]
        counts = {lab: top.count(lab) for lab in top}
        best = max(counts.values())
        vote = next(lab for lab in top if counts[lab] == best)
        per_query.append(
            {
                "ap": ap,
                "ap_k": ap_k,
                "p": {k: prec(k) for k in ks},
                "r": {k: sum(rel[: min(k, m)]) / n_rel for k in ks},
                "curve": [prec(k) for k in range(1, min(max(ks), len(db)) + 1)],
                "knn": vote == query_labels[qi],
                "chance": n_rel / m,
            }
        )
    done = [p for p in per_query if p is not None]
    n = len(done)
    return {
        "per_query": per_query,
        "n_evaluated": n,
        "map": sum(p["ap"] for p in done) / n,
        "map_k": sum(p["ap_k"] for p in done) / n,
        "p": {k: sum(p["p"][k] for p in done) / n for k in ks},
        "r": {k: sum(p["r"][k] for p in done) / n for k in ks},
        "curve": [sum(p["curve"][i] for p in done) / n for i in range(len(done[0]["curve"]))],
        "knn": sum(p["knn"] for p in done) / n,
        "chance": sum(p["chance"] for p in done) / n,
    }


def assert_matches(result: EvaluationResult, ref: dict, atol: float = 1e-9) -> None:
    assert result.n_evaluated == ref["n_evaluated"]
    assert result.n_no_relevant == result.n_queries - ref["n_evaluated"]
    assert result.mean_average_precision == pytest.approx(ref["map"], abs=atol)
    assert result.map_at_k == pytest.approx(ref["map_k"], abs=atol)
    assert result.knn_accuracy == pytest.approx(ref["knn"], abs=atol)
    assert result.chance_precision == pytest.approx(ref["chance"], abs=atol)
    for k in result.ks:
        assert result.precision_at_k[k] == pytest.approx(ref["p"][k], abs=atol), k
        assert result.recall_at_k[k] == pytest.approx(ref["r"][k], abs=atol), k
    np.testing.assert_allclose(result.precision_curve, ref["curve"], atol=atol)
    for i, p in enumerate(ref["per_query"]):
        if p is None:
            assert math.isnan(result.query_average_precision[i]) and not result.query_knn_correct[i]
            assert math.isnan(result.query_ap_at_k[i])
        else:
            assert result.query_average_precision[i] == pytest.approx(p["ap"], abs=atol)
            assert result.query_ap_at_k[i] == pytest.approx(p["ap_k"], abs=atol)
            assert bool(result.query_knn_correct[i]) == p["knn"]


def random_case(seed: int, n_db: int = 37, n_q: int = 11, d: int = 6, n_classes: int = 4):
    rng = np.random.default_rng(seed)
    db = rng.standard_normal((n_db, d)).astype(np.float32)
    q = rng.standard_normal((n_q, d)).astype(np.float32)
    return db, rng.integers(0, n_classes, n_db), q, rng.integers(0, n_classes, n_q)


# ---------------------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_separate_queries_match_the_reference(seed: int, metric: str) -> None:
    db, dl, q, ql = random_case(seed)
    kw = dict(ks=(1, 2, 5, 10, 50), map_at=8, knn_k=5, metric=metric)
    result = evaluate_vectors(db, dl, q, ql, chunk_size=4, **kw)
    assert_matches(result, reference(db, dl, q, ql, exclude=[-1] * len(q), **kw))
    assert result.n_queries == len(q) and result.n_database == len(db) and result.metric == metric


@pytest.mark.parametrize("seed", [10, 11, 12])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_leave_one_out_matches_the_reference(seed: int, metric: str) -> None:
    db, dl, _, _ = random_case(seed, n_db=30, n_classes=5)
    dl[7] = 99  # a class of one image: nothing relevant once it is left out
    kw = dict(ks=(1, 3, 10, 29, 30, 1000), map_at=6, knn_k=4, metric=metric)
    result = evaluate_vectors(db, dl, chunk_size=7, **kw)
    ref = reference(db, dl, db, dl, exclude=list(range(len(db))), **kw)
    assert_matches(result, ref)
    assert result.n_queries == 30 and result.n_no_relevant >= 1
    assert math.isnan(result.query_average_precision[7])
    assert len(result.precision_curve) == 30  # max(ks) clamped to the database


@pytest.mark.parametrize("chunk_size", [1, 7, 1000, None])
@pytest.mark.parametrize("threads", [1, 3])
def test_chunking_and_threads_do_not_change_anything(chunk_size: int | None, threads: int) -> None:
    db, dl, q, ql = random_case(5, n_db=41, n_q=23)
    kw = dict(ks=(1, 4, 9, 100), map_at=12, knn_k=6)
    result = evaluate_vectors(db, dl, q, ql, chunk_size=chunk_size, threads=threads, **kw)
    assert_matches(result, reference(db, dl, q, ql, metric="cosine", exclude=[-1] * len(q), **kw), atol=1e-12)


def test_ties_are_ordered_by_database_row() -> None:
    """Vectors of four +-1 entries: every cosine is an exact multiple of 1/4, so ties abound."""
    rng = np.random.default_rng(7)
    d, n_db, n_q = 6, 40, 15

    def vecs(n):
        v = np.zeros((n, d), np.float32)
        for row in v:
            row[rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
        return v

    db, q = vecs(n_db), vecs(n_q)
    q[:3] = db[:3]  # duplicates of database rows
    db[10:13] = db[3]
    dl, ql = rng.integers(0, 3, n_db), rng.integers(0, 3, n_q)
    scores = (q / 2) @ (db / 2).T
    assert len(np.unique(scores)) < 10  # really tied
    kw = dict(ks=(1, 2, 3, 5, 8, 40), map_at=5, knn_k=4, metric="cosine")
    result = evaluate_vectors(db, dl, q, ql, chunk_size=6, **kw)
    assert_matches(result, reference(db, dl, q, ql, exclude=[-1] * n_q, **kw), atol=1e-12)
    # integer vectors: exact euclidean distances, tied too
    dbi, qi = rng.integers(-2, 3, (n_db, 3)).astype(np.float32), rng.integers(-2, 3, (n_q, 3)).astype(np.float32)
    kw["metric"] = "euclidean"
    result = evaluate_vectors(dbi, dl, qi, ql, chunk_size=4, **kw)
    assert_matches(result, reference(dbi, dl, qi, ql, exclude=[-1] * n_q, **kw), atol=1e-12)


def test_tie_order_decides_the_numbers() -> None:
    """Two database items at the same distance: the lower row ranks first, whichever is relevant."""
    db = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    q = np.array([[1.0, 0.0]], np.float32)
    first = evaluate_vectors(db, ["a", "b"], q, ["a"], ks=(1,), knn_k=1)
    second = evaluate_vectors(db, ["b", "a"], q, ["a"], ks=(1,), knn_k=1)
    assert first.precision_at_k[1] == 1.0 and first.mean_average_precision == 1.0 and first.knn_accuracy == 1.0
    assert second.precision_at_k[1] == 0.0 and second.mean_average_precision == 0.5 and second.knn_accuracy == 0.0


def test_explicit_exclusion_matches_the_reference() -> None:
    db, dl, q, ql = random_case(21, n_db=25, n_q=9)
    exclude = np.array([-1, 0, 24, 3, -1, 3, 10, 11, -1])
    kw = dict(ks=(1, 5, 24, 25), map_at=25, knn_k=25, metric="euclidean")
    result = evaluate_vectors(db, dl, q, ql, exclude=exclude, chunk_size=2, **kw)
    assert_matches(result, reference(db, dl, q, ql, exclude=exclude.tolist(), **kw))
    plain = evaluate_vectors(db, dl, q, ql, chunk_size=2, **kw)
    assert plain.query_average_precision[1] != result.query_average_precision[1]


def test_string_labels_give_the_same_numbers_as_integers() -> None:
    db, dl, q, ql = random_case(3)
    names = np.array(["cat", "dog", "bird", "fish"])
    ints = evaluate_vectors(db, dl, q, ql, ks=(1, 5), knn_k=3)
    strs = evaluate_vectors(db, names[dl].tolist(), q, list(names[ql]), ks=(1, 5), knn_k=3)
    assert strs.to_dict() | {"seconds": 0} == ints.to_dict() | {"seconds": 0}
    np.testing.assert_array_equal(strs.query_average_precision, ints.query_average_precision)


# --------------------------------------------------------------------------------- hand-worked numbers
def test_a_worked_example() -> None:
    """Query at 0; database at distances 1..5 labelled a, b, a, b, b; the query is an 'a'."""
    db = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]], np.float32)
    r = evaluate_vectors(db, list("abab" + "b"), np.zeros((1, 1), np.float32), ["a"], ks=(1, 2, 3, 10),
                         map_at=2, knn_k=3, metric="euclidean")  # fmt: skip
    assert r.mean_average_precision == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert r.map_at_k == pytest.approx(1.0)  # ranks 1-2 hold one hit, at rank 1: 1 / hits(2) = 1
    r3 = evaluate_vectors(db, list("abab" + "b"), np.zeros((1, 1), np.float32), ["a"], map_at=3, metric="euclidean")
    assert r3.map_at_k == pytest.approx((1 / 1 + 2 / 3) / 2)  # hits at ranks 1 and 3: the full AP
    assert r.precision_at_k == pytest.approx({1: 1.0, 2: 0.5, 3: 2 / 3, 10: 2 / 5})  # k=10 clamped to 5
    assert r.recall_at_k == pytest.approx({1: 0.5, 2: 0.5, 3: 1.0, 10: 1.0})
    assert r.knn_accuracy == 1.0  # a, b, a
    np.testing.assert_allclose(r.precision_curve, [1, 1 / 2, 2 / 3, 2 / 4, 2 / 5])


def test_knn_vote_ties_go_to_the_best_ranked_neighbour() -> None:
    db = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)  # labels by rank: z, a, a, z
    q = np.zeros((2, 1), np.float32)
    r = evaluate_vectors(db, ["z", "a", "a", "z"], q, ["z", "a"], knn_k=4, metric="euclidean")
    np.testing.assert_array_equal(r.query_knn_correct, [True, False])  # 2-2 tie: the nearest, z, wins
    r = evaluate_vectors(db, ["z", "a", "a", "z"], q, ["z", "a"], knn_k=3, metric="euclidean")
    np.testing.assert_array_equal(r.query_knn_correct, [False, True])  # 2 a's beat 1 z


def test_zero_relevant_queries_are_counted_and_left_out() -> None:
    db = np.eye(4, dtype=np.float32)
    r = evaluate_vectors(db, ["a", "a", "b", "c"], ks=(1,), knn_k=1)  # leave-one-out: b and c are alone
    assert (r.n_queries, r.n_evaluated, r.n_no_relevant) == (4, 2, 2)
    assert r.precision_at_k[1] == 1.0  # all scores tie at 0: the lowest other row, the other a, comes first
    lonely = evaluate_vectors(db, ["a", "b", "c", "d"], ks=(1,))
    assert lonely.n_evaluated == 0 and math.isnan(lonely.mean_average_precision)
    assert lonely.to_dict()["mean_average_precision"] is None


# ------------------------------------------------------------------------------------- scikit-learn
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_full_ap_equals_sklearn_average_precision(metric: str) -> None:
    from sklearn.metrics import average_precision_score

    db, dl, q, ql = random_case(31, n_db=60, n_q=20, n_classes=3)
    r = evaluate_vectors(db, dl, q, ql, metric=metric)
    if metric == "cosine":
        scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (db / np.linalg.norm(db, axis=1, keepdims=True)).T
    else:
        scores = -np.linalg.norm(q[:, None, :] - db[None, :, :], axis=2)
    expected = [average_precision_score(dl == lab, s) for lab, s in zip(ql, scores)]
    np.testing.assert_allclose(r.query_average_precision, expected, rtol=1e-9)
    assert r.mean_average_precision == pytest.approx(np.mean(expected))
    # leave-one-out: the query's own entry is not a candidate
    r = evaluate_vectors(db, dl, metric=metric)
    own = np.eye(len(db), dtype=bool)
    full = (db / np.linalg.norm(db, axis=1, keepdims=True)) @ (db / np.linalg.norm(db, axis=1, keepdims=True)).T
    if metric == "euclidean":
        full = -np.linalg.norm(db[:, None, :] - db[None, :, :], axis=2)
    expected = [average_precision_score((dl == dl[i])[~own[i]], full[i][~own[i]]) for i in range(len(db))]
    np.testing.assert_allclose(r.query_average_precision, expected, rtol=1e-9)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("map_at", [1, 3, 10, 59, 60, 1000])
def test_ap_at_k_equals_sklearn_on_the_top_k(metric: str, map_at: int) -> None:
    """AP@k is scikit-learn's AP of the first k results alone (0 when none is relevant)."""
    from sklearn.metrics import average_precision_score

    db, dl, q, ql = random_case(32, n_db=60, n_q=40, n_classes=6)
    r = evaluate_vectors(db, dl, q, ql, metric=metric, map_at=map_at)
    if metric == "cosine":
        scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (db / np.linalg.norm(db, axis=1, keepdims=True)).T
    else:
        scores = -np.linalg.norm(q[:, None, :] - db[None, :, :], axis=2)
    expected, any_missed, no_hits = [], False, False
    for lab, s in zip(ql, scores):
        rel = (dl == lab)[np.argsort(-s, kind="stable")][:map_at]  # the first k, best first
        any_missed |= 0 < rel.sum() < min(map_at, (dl == lab).sum())  # where min(k, R) would differ
        no_hits |= not rel.any()
        expected.append(average_precision_score(rel, -np.arange(len(rel))) if rel.any() else 0.0)
    assert r.n_no_relevant == 0
    assert r.map_at_k == pytest.approx(np.mean(expected), rel=1e-9)
    if map_at >= len(db):  # k >= M: AP@k is the full AP
        assert r.map_at_k == pytest.approx(r.mean_average_precision, rel=1e-12)
    elif map_at > 1:  # (at k = 1 the two denominators agree)
        assert any_missed  # the case tells the hits denominator from min(k, R)
    if map_at == 1:
        assert no_hits  # a query without a hit in the first k scores 0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 5, 9])
def test_knn_accuracy_equals_sklearn_classifier(metric: str, k: int) -> None:
    """Two classes and an odd k: no vote can tie, so scikit-learn's tie rule does not matter."""
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(k)
    dl, ql = rng.integers(0, 2, 80), rng.integers(0, 2, 50)
    db = (rng.standard_normal((80, 5)) + dl[:, None] * 0.8).astype(np.float32)
    q = (rng.standard_normal((50, 5)) + ql[:, None] * 0.8).astype(np.float32)
    clf = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute").fit(db, dl)
    r = evaluate_vectors(db, dl, q, ql, knn_k=k, metric=metric)
    np.testing.assert_array_equal(r.query_knn_correct, clf.predict(q) == ql)
    assert r.knn_accuracy == pytest.approx(clf.score(q, ql))
    assert 0.5 < r.knn_accuracy < 1.0  # a case where the answer is informative


# -------------------------------------------------------------------------------------- the contract
def test_memory_stays_bounded_by_the_chunk() -> None:
    rng = np.random.default_rng(0)
    db = rng.standard_normal((5000, 8)).astype(np.float32)
    q = rng.standard_normal((2000, 8)).astype(np.float32)
    dl, ql = rng.integers(0, 10, 5000), rng.integers(0, 10, 2000)
    tracemalloc.start()
    try:
        evaluate_vectors(db, dl, q, ql, chunk_size=50, threads=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12e6  # a full 2000 x 5000 float32 matrix alone would be 40 MB


def test_progress_is_reported_per_chunk() -> None:
    db, dl, q, ql = random_case(4, n_q=10)
    calls = []
    evaluate_vectors(db, dl, q, ql, chunk_size=4, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 10), (8, 10), (10, 10)]


def test_to_dict_round_trips_and_is_json_ready() -> None:
    import json

    db, dl, q, ql = random_case(6)
    r = evaluate_vectors(db, dl, q, ql, ks=(1, 10), map_at=10, knn_k=3)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["precision_at_k"].keys() == {"1", "10"} and len(d["precision_curve"]) == 10
    back = EvaluationResult.from_dict(d)
    assert back.precision_at_k == r.precision_at_k and back.map_at_k == r.map_at_k
    np.testing.assert_allclose(back.precision_curve, r.precision_curve)


def test_bad_arguments_are_clear_errors() -> None:
    db, dl, q, ql = random_case(0)
    with pytest.raises(LookalikeError, match="metric"):
        evaluate_vectors(db, dl, q, ql, metric="hamming")
    with pytest.raises(LookalikeError, match="ks must be at least 1"):
        evaluate_vectors(db, dl, q, ql, ks=(0, 5))
    with pytest.raises(LookalikeError, match="labels"):
        evaluate_vectors(db, dl[:-1], q, ql)
    with pytest.raises(LookalikeError, match="-d"):
        evaluate_vectors(db, dl, q[:, :3], ql)
    with pytest.raises(LookalikeError, match="exclude"):
        evaluate_vectors(db, dl, q, ql, exclude=np.full(len(q), len(db)))
    with pytest.raises(LookalikeError, match="NaN"):
        evaluate_vectors(np.full_like(db, np.nan), dl, q, ql)
    with pytest.raises(LookalikeError, match="None"):
        evaluate_vectors(db, [None] * len(db), q, ql)


def test_sort_keys_follow_the_float_order() -> None:
    v = np.array([3.5, -0.0, 0.0, -2.0, 1e-45, -1e-45, np.inf, -np.inf, 0.25, -0.25], np.float32)
    for descending in (False, True):
        keys = _sort_keys(v.copy(), descending)
        expected = sorted(range(len(v)), key=lambda i: (-v[i] if descending else v[i], i))
        assert np.argsort(keys, kind="stable").tolist() == expected
        assert keys[1] == keys[2]  # -0.0 and 0.0 tie
