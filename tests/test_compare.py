"""`lookalike compare`, the paired bootstrap, the query split, and adapting pretrained features."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lookalike import LookalikeError
from lookalike import comparison as cmp
from lookalike.adaptation import adapt, knn_graph
from lookalike.metrics import evaluate_vectors
from lookalike.models import Model
from lookalike.models import pretrained as pt
from lookalike.models.spec import parse_spec

from .conftest import one_error_line, run_cli


# ------------------------------------------------------------------------------------------ statistics
def test_paired_bootstrap_sees_a_real_difference_and_no_difference() -> None:
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, 400)
    a = np.clip(b + 0.05 + rng.normal(0, 0.05, 400), 0, 1)
    mean, (low, high), p = cmp.paired_bootstrap(a, b, n=2000, seed=1)
    assert mean == pytest.approx(float(np.mean(a - b)))
    assert 0 < low < mean < high and p < 0.01
    noise = b + rng.normal(0, 0.05, 400)  # no shift: the interval covers 0
    _, (low, high), p = cmp.paired_bootstrap(noise, b, n=2000, seed=1)
    assert low < 0 < high and p > 0.05
    a_nan = a.copy()
    a_nan[:10] = np.nan  # left-out queries are dropped from both sides
    assert cmp.paired_bootstrap(a_nan, b)[0] == pytest.approx(float(np.mean(a[10:] - b[10:])))


def test_split_is_stratified_seeded_and_keeps_a_database_image_per_label() -> None:
    labels = ["a"] * 50 + ["b"] * 10 + ["c"] * 2 + ["d"]
    q, db = cmp.split_queries(labels, 0.2, 1000, seed=0)
    assert set(q).isdisjoint(db) and len(q) + len(db) == len(labels)
    lab = np.asarray(labels)
    assert (lab[q] == "a").sum() == 10 and (lab[q] == "b").sum() == 2 and (lab[q] == "c").sum() == 1
    assert "d" not in lab[q]  # a singleton can only be in the database
    for c in "abc":
        assert (lab[db] == c).sum() >= 1
    np.testing.assert_array_equal(q, cmp.split_queries(labels, 0.2, 1000, seed=0)[0])
    assert not np.array_equal(q, cmp.split_queries(labels, 0.2, 1000, seed=1)[0])
    q_cap, _ = cmp.split_queries(labels, 0.5, 6, seed=0)
    assert len(q_cap) <= 8
    with pytest.raises(LookalikeError, match="at least 2 labels"):
        cmp.split_queries(["a"] * 5 + ["b"], 0.2, 100, seed=0)


# -------------------------------------------------------------------------------------------- adapt
@pytest.fixture
def identity_extractor():
    """A registered extractor whose features are the 8 mean colours/intensities of the input (no weights to fetch)."""

    class MeanPool(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.proj(x.mean(dim=(2, 3))))

    def build(size: int) -> torch.nn.Module:
        torch.manual_seed(0)
        return MeanPool()

    pt.register_extractor("meanpool-test", build, embedding_dim=16, image_size=8)
    yield "meanpool-test"
    del pt.BACKBONES["meanpool-test"]


def clustered_features(n_per: int = 120, n_classes: int = 6, dim: int = 16, seed: int = 0):
    """Classes as tight groups along a direction, plus a strong nuisance component shared across classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim))
    nuisance = rng.normal(0, 1, (4, dim))
    labels = np.repeat(np.arange(n_classes), n_per)
    x = (
        centres[labels]
        + 1.4 * rng.normal(0, 1, (len(labels), 4)) @ nuisance
        + 0.3 * rng.normal(0, 1, (len(labels), dim))
    )
    return np.abs(x).astype(np.float32), labels  # non-negative like ReLU features


def _neighbour_gap(z: np.ndarray, graph: np.ndarray, seed: int = 0) -> float:
    """Mean cosine of each row with its graph neighbours minus that with random rows."""
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    near = np.einsum("id,ikd->ik", u, u[graph]).mean()
    rand = np.random.default_rng(seed).integers(0, len(u), graph.shape)
    return float(near - np.einsum("id,ikd->ik", u, u[rand]).mean())


def test_neighbour_head_pulls_neighbours_together_and_reloads(identity_extractor: str, tmp_path: Path) -> None:
    """The head learns what it is trained for: graph neighbours closer, random pairs further apart.

    (Its retrieval gain on real features is measured in benchmarks/compare_cifar10.py.)
    """
    base = Model.pretrained(identity_extractor)
    x, _ = clustered_features()
    adapted = adapt(base, x, method="neighbours", dims=8, hidden=64, neighbours=5, epochs=20, batch_size=128,
                    seed=0, blend=0)  # fmt: skip
    assert adapted.extractor == f"{identity_extractor}+adapted" and adapted.embedding_dim == 8
    info = adapted.info["adaptation"]
    assert info["method"] == "neighbours" and info["images"] == len(x) and info["epochs"] == 20
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    centred = unit - unit.mean(0)
    graph = knn_graph(centred / np.linalg.norm(centred, axis=1, keepdims=True), 5)
    with torch.no_grad():
        z = adapted.network.head(torch.from_numpy(x)).numpy()
    before, after = _neighbour_gap(centred, graph), _neighbour_gap(z, graph)
    assert after > before + 0.02, (before, after)
    # saved and reloaded, the head gives the same vectors
    adapted.save(tmp_path / "m")
    again = Model.load(tmp_path / "m")
    with torch.no_grad():
        np.testing.assert_allclose(again.network.head(torch.from_numpy(x)).numpy(), z, rtol=1e-5, atol=1e-6)
    with pytest.raises(LookalikeError, match="without a head"):
        adapt(again, x)


def test_views_head_learns_what_stays_the_same_across_views(identity_extractor: str, tmp_path: Path) -> None:
    """The default method: features of augmented views of an image, scattered along a few "nuisance"
    directions, are mapped together. Two new views of each image (never seen in the fit) then find each
    other among all the images' far more often than in the frozen space."""
    base = Model.pretrained(identity_extractor)
    rng = np.random.default_rng(0)
    n = 200
    content = rng.normal(size=(n, 8)).astype(np.float32)  # what is the same in every view of an image

    def views_of(count: int) -> np.ndarray:
        nuisance = rng.normal(0, 1.5, (count, n, 8)).astype(np.float32)  # what a crop or a jitter changes
        return np.concatenate([np.broadcast_to(content, (count, n, 8)), nuisance], axis=2)

    x = views_of(1)[0]
    adapted = adapt(base, x, views=views_of(2), dims=8, hidden=64, epochs=100, batch_size=64, seed=0, blend=0)
    info = adapted.info["adaptation"]
    assert info["method"] == "views" and info["views"] == 2 and adapted.embedding_dim == 8

    def self_retrieval(embed: Any) -> float:
        a, b = (embed(v) for v in views_of(2))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        return float(np.mean(np.argmax(a @ b.T, axis=1) == np.arange(n)))

    with torch.no_grad():
        learned = self_retrieval(lambda a: adapted.network.head(torch.from_numpy(a)).numpy())
    frozen = self_retrieval(lambda a: a.copy())
    assert learned > frozen + 0.2, (frozen, learned)


def test_embed_views_decodes_once_and_reports_unreadable_files(class_folder: Path, tmp_path: Path) -> None:
    from lookalike.adaptation import embed_views
    from lookalike.data import find_images

    base = Model.pretrained("pixels", image_size=8)
    paths = find_images(class_folder)[:10]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    got = embed_views(base, [*paths[:5], broken, *paths[5:]], views=3, seed=1, num_workers=0)
    assert got.views.shape == (3, 10, base.embedding_dim) and got.original is not None
    assert got.positions.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert [p for p, _ in got.failures] == [broken]
    np.testing.assert_allclose(got.original, base.embed(paths), atol=1e-6)  # the images as they are
    assert not np.allclose(got.views[0], got.original) and not np.allclose(got.views[0], got.views[1])
    again = embed_views(base, paths, views=3, seed=1, original=False, num_workers=0)
    assert again.original is None
    np.testing.assert_allclose(again.views, got.views, atol=1e-6)  # seeded: the same views


def test_blended_head_keeps_the_frozen_similarity(identity_extractor: str, tmp_path: Path) -> None:
    """The safeguard: a blended embedding's cosine is blend x the frozen features' cosine + (1 - blend) x the
    head's, exactly (with every frozen direction kept, the projection keeps the frozen cosines)."""
    base = Model.pretrained(identity_extractor)
    x, _ = clustered_features(n_per=40)
    views = x[None] + np.random.default_rng(1).normal(0, 0.3, (2, *x.shape)).astype(np.float32)
    kw = dict(views=views, dims=8, hidden=64, epochs=3, batch_size=64, seed=0)
    plain = adapt(base, x, blend=0, **kw)
    blended = adapt(base, x, blend=0.3, frozen_dims=16, **kw)
    assert plain.embedding_dim == 8 and blended.embedding_dim == 16 + 8
    assert blended.info["adaptation"]["blend"] == 0.3 and "blend" not in plain.info["adaptation"]
    with torch.no_grad():
        zb = blended.network.head(torch.from_numpy(x)).numpy()
        zp = plain.network.head(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(zb[:, 16:] / np.sqrt(0.7), zp / np.linalg.norm(zp, axis=1, keepdims=True), atol=1e-5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    head = zp / np.linalg.norm(zp, axis=1, keepdims=True)
    np.testing.assert_allclose(zb @ zb.T, 0.3 * unit @ unit.T + 0.7 * head @ head.T, atol=1e-4)
    blended.save(tmp_path / "m")
    with torch.no_grad():
        again = Model.load(tmp_path / "m").network.head(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(again, zb, rtol=1e-5, atol=1e-6)
    with pytest.raises(LookalikeError, match="blend is the frozen similarity's weight"):
        adapt(base, x, blend=1.0)


def test_pca_head_is_the_projection_of_centred_unit_features(identity_extractor: str) -> None:
    base = Model.pretrained(identity_extractor)
    x, _ = clustered_features(n_per=30)
    adapted = adapt(base, x, method="pca", dims=4)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = unit - unit.mean(0)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    w, v = np.linalg.eigh(np.cov(c, rowvar=False))
    expected = c @ v[:, np.argsort(w)[::-1][:4]]
    with torch.no_grad():
        got = adapted.network.head(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=1e-4)  # eigenvectors are defined up to sign


def test_knn_graph_excludes_self_and_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 5)).astype(np.float32)
    g = knn_graph(x, 3)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    np.testing.assert_array_equal(np.sort(g, axis=1), np.sort(np.argsort(-s, axis=1)[:, :3], axis=1))


def test_adapt_refuses_bad_input(identity_extractor: str) -> None:
    base = Model.pretrained(identity_extractor)
    with pytest.raises(LookalikeError, match="16-d features"):
        adapt(base, np.zeros((40, 3), np.float32), method="neighbours")
    with pytest.raises(LookalikeError, match="at least"):
        adapt(base, np.ones((4, 16), np.float32), method="neighbours")
    with pytest.raises(LookalikeError, match="the views method needs the images' paths"):
        adapt(base, np.ones((40, 16), np.float32))
    with pytest.raises(LookalikeError, match="views have shape"):
        adapt(base, np.ones((40, 16), np.float32), views=np.ones((2, 39, 16), np.float32))
    with pytest.raises(LookalikeError, match="unknown adaptation method"):
        adapt(base, np.ones((40, 16), np.float32), method="magic")


# ------------------------------------------------------------------------------------------ compare
def test_compare_scores_every_row_on_the_same_queries(
    class_folder: Path, trained_model_dir: Path, identity_extractor: str, tmp_path: Path
) -> None:
    result = cmp.compare(
        class_folder,
        extractors=["autoencoder", "pixels", "pixels@8", f"{identity_extractor}+adapted"],
        model=trained_model_dir,
        out_dir=tmp_path / "out",
        map_at=10,
        query_fraction=0.25,
        adapt_epochs=2,
    )
    assert [r.name for r in result.rows] == ["autoencoder", "pixels", "pixels@8", f"{identity_extractor}+adapted"]
    assert result.n_queries + result.n_database == result.n_images == 24
    assert {r.result.n_queries for r in result.rows} == {result.n_queries}
    assert result.row("pixels@8").dims == 3 * 8 * 8 and result.row("pixels").dims == 3 * 32 * 32
    # each row's numbers are those of evaluate_vectors on its own vectors
    row = result.row("pixels")
    q, db = result.query_rows, result.database_rows
    labels = np.asarray(result.labels)
    ref = evaluate_vectors(row.vectors[db], labels[db], row.vectors[q], labels[q], ks=(1, 10, 100), map_at=10)
    assert row.result.map_at_k == pytest.approx(ref.map_at_k)
    # the pick is judged on the first screen and the deep list alike: (AP@k + P@10) / 2 per query
    expected = (row.result.query_ap_at_k + row.result.query_precision_at_k[:, list(row.result.ks).index(10)]) / 2
    np.testing.assert_allclose(row.query_scores, expected)
    assert row.score == pytest.approx(np.nanmean(expected))
    best = max(result.rows, key=lambda r: r.score)
    assert result.winner == best.name and result.recommended in {r.name for r in result.rows}
    assert result.recommendation and (result.significant == (result.ci[0] > 0))
    # the adapted head was fitted on database images only and saved for reuse
    adapted = result.row(f"{identity_extractor}+adapted")
    assert adapted.model.info["adaptation"]["images"] == result.n_database
    assert Path(adapted.model_dir, "config.json").is_file()

    report = cmp.write_report(result, tmp_path / "out")
    page = report.read_text()
    assert "Recommendation" in page and "pixels@8" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # offline: nothing from the network
    assert page.count("data:image/jpeg;base64,") >= 4 and "data:image/png;base64," in page
    data = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert data["winner"] == result.winner and len(data["rows"]) == 4


def test_compare_timing_and_small_folders(tmp_path: Path) -> None:
    """Encoders are timed on the same images, warm, best of several passes; an adapted head costs its
    backbone's time plus its own (never less); a row that cannot run on so few images is skipped with a
    line; a recommendation resting on few queries says so."""
    from .conftest import make_class_images

    make_class_images(tmp_path / "small", per_class=9, size=16)
    notes: list[str] = []

    class Notes:
        def on_note(self, text: str) -> None:
            notes.append(text)

    result = cmp.compare(tmp_path / "small", extractors=["pixels@8", "pixels@8+adapted"], map_at=10,
                         callbacks=[Notes()])  # fmt: skip
    assert [r.name for r in result.rows] == ["pixels@8"]  # 14 database images: too few for a head
    assert notes == ["pixels@8+adapted: skipped: 14 database images, too few to learn a head from (it needs 16)"]
    assert f"only {result.n_queries} queries" in result.recommendation and result.n_queries < cmp.FEW_QUERIES
    make_class_images(tmp_path / "more", per_class=16, size=16)
    result = cmp.compare(tmp_path / "more", extractors=["pixels@8", "pixels@8+adapted"], map_at=10, adapt_epochs=2)
    frozen, adapted = result.row("pixels@8"), result.row("pixels@8+adapted")
    assert 0 < frozen.encode_ms < adapted.encode_ms
    assert result.to_dict()["rows"][1]["encode_ms"] == pytest.approx(adapted.encode_ms, abs=1e-3)


def test_compare_remembers_the_pick_for_index_auto(class_folder: Path, trained_model_dir: Path, tmp_path: Path) -> None:
    result = cmp.compare(class_folder, extractors=["pixels", "pixels@8"], out_dir=tmp_path, map_at=10)
    cmp.remember(result)
    spec, why = cmp.recommended_extractor(class_folder)
    assert spec == f"pixels@{result.row(result.recommended).image_size}" and "comparison" in why
    out = tmp_path / "auto-index"
    r = run_cli("index", class_folder, "-o", out, "-e", "auto")
    assert r.exit_code == 0, r.output
    assert "--extractor auto: using pixels@" in r.output
    # a remembered adapted pick is named so that it parses again (NAME@SIZE+adapted)
    spec = cmp._spec_of({"extractor": "efficientnet-lite0+adapted", "image_size": 160})
    assert spec == "efficientnet-lite0@160+adapted" and parse_spec(spec).image_size == 160
    assert cmp._spec_of({"extractor": "autoencoder", "image_size": 32}) == "autoencoder"


def test_cli_compare_prints_table_and_writes_report(
    class_folder: Path, trained_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    r = run_cli("compare", class_folder, "-e", "autoencoder,pixels", "-m", trained_model_dir, "-o", out, "-k", "10")
    assert r.exit_code == 0, r.output
    assert "mAP@10" in r.output and "recommendation:" in r.output
    assert (out / "report.html").is_file() and (out / "precision_at_k.png").is_file()
    r = run_cli("compare", class_folder, "-e", "pixels,nope", "-o", tmp_path / "x")
    assert r.exit_code == 1 and "unknown extractor 'nope'" in one_error_line(r)


def test_compare_needs_labels(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    r = run_cli("compare", tmp_path, "-e", "pixels", "-o", tmp_path / "out")
    assert r.exit_code == 1 and "has a label" in one_error_line(r)


def test_api_names_are_functions_not_their_modules() -> None:
    import lookalike
    import lookalike.adaptation
    import lookalike.comparison

    assert lookalike.compare is lookalike.comparison.compare and callable(lookalike.compare)
    assert lookalike.adapt is lookalike.adaptation.adapt
    assert lookalike.register_extractor is pt.register_extractor


def test_embedding_reports_its_start_so_rates_are_honest(class_folder: Path) -> None:
    """Before: the first on_embed came after the first batch, so a progress bar's clock started late and a
    one-batch folder showed thousands of images/s. Now every embedding step says when it starts."""
    from lookalike.adaptation import embed_views
    from lookalike.data import find_images
    from lookalike.embed import embed_files

    calls: list[tuple[int, int]] = []

    class Calls:
        def on_embed(self, done: int, total: int) -> None:
            calls.append((done, total))

    base = Model.pretrained("pixels", image_size=8)
    paths = find_images(class_folder)
    embed_files(base, paths, num_workers=0, callbacks=[Calls()])
    assert calls[0] == (0, len(paths)) and calls[-1] == (len(paths), len(paths))
    calls.clear()
    embed_views(base, paths, num_workers=0, callbacks=[Calls()])
    assert calls[0] == (0, len(paths)) and calls[-1] == (len(paths), len(paths))
