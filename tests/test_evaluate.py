"""Evaluating an index: the Python API, labels files, the `evaluate` verb, and a model that learns stripes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lookalike
from lookalike import Index, LookalikeError
from lookalike.metrics import evaluate_vectors
from lookalike.search import read_label_file
from lookalike.training import train

from .conftest import make_class_images, one_error_line, run_cli, tree_snapshot


@pytest.fixture(scope="module")
def index(built_index_dir: Path) -> Index:
    return Index.load(built_index_dir)


def _share_of_same_label(index: Index, hits_per_query: list, query_labels: list[str], k: int) -> float:
    return float(np.mean([[h.label == lab for h in hits[:k]] for hits, lab in zip(hits_per_query, query_labels)]))


# ------------------------------------------------------------------------------------------- the API
def test_leave_one_out_agrees_with_search(index: Index) -> None:
    result = index.evaluate(ks=(1, 5), knn_k=3)
    assert (result.n_queries, result.n_database, result.n_no_relevant) == (24, 24, 0)
    assert result.info["queries"] == "leave-one-out" and result.info["labels"] == "folders"
    assert result.query_keys == list(range(24))
    assert result.query_labels == [index.entries[i].label for i in range(24)]
    hits = index.search_batch(list(range(24)), k=5, exclude_self=True)
    for k in (1, 5):
        assert result.precision_at_k[k] == pytest.approx(_share_of_same_label(index, hits, result.query_labels, k))
    # the stored vectors, not a re-embedding: evaluate_vectors on them gives the same numbers
    raw = index.vectors.reconstruct(index.vectors.ids)
    direct = evaluate_vectors(raw, result.query_labels, ks=(1, 5), knn_k=3)
    assert direct.to_dict() | {"seconds": 0, "info": {}} == result.to_dict() | {"seconds": 0, "info": {}}


def test_a_folder_of_queries_is_searched_against_the_whole_index(index: Index, tmp_path: Path) -> None:
    made = make_class_images(tmp_path / "queries", per_class=3, seed=5)
    (tmp_path / "queries" / "loose.png").write_bytes(made["warm"][1].read_bytes())  # no sub-folder: no label
    (tmp_path / "queries" / "cool" / "broken.jpg").write_text("not a jpeg")
    result = index.evaluate(tmp_path / "queries", ks=(1, 3), knn_k=3, num_workers=0)
    assert (result.n_queries, result.n_database) == (6, 24)
    assert result.info["n_queries_unlabelled"] == 1 and result.info["n_queries_unreadable"] == 1
    assert sorted(result.query_labels) == ["cool"] * 3 + ["warm"] * 3
    assert all(isinstance(k, Path) and k.is_file() for k in result.query_keys)
    hits = index.search_batch([str(p) for p in result.query_keys], k=3)
    assert result.precision_at_k[3] == pytest.approx(_share_of_same_label(index, hits, result.query_labels, 3))
    same = lookalike.evaluate(index.directory, tmp_path / "queries", ks=(1, 3), knn_k=3, num_workers=0)
    assert same.precision_at_k == result.precision_at_k


def test_labels_from_a_file(index: Index, class_folder: Path, tmp_path: Path) -> None:
    """Labels by the image number's parity (not the folder): relative and absolute paths, a header."""
    ids = sorted(index.entries)
    labels = {i: f"n{int(Path(index.entries[i].path).stem.split('_')[1]) % 2}" for i in ids[:20]}
    lines = ["path,label"]
    for i, lab in labels.items():
        rel = index.entries[i].path
        lines.append(f"{class_folder / rel if i % 3 == 0 else rel},{lab}")
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("\n".join(lines) + "\n\n")
    result = index.evaluate(labels=csv_file, ks=(1, 4), knn_k=3)
    assert result.n_database == 20 and result.info["n_database_unlabelled"] == 4
    assert result.info["labels"] == str(csv_file)
    assert result.query_labels == [labels[i] for i in ids[:20]]
    raw = index.vectors.reconstruct(np.array(ids[:20]))
    expected = evaluate_vectors(raw, list(labels.values()), ks=(1, 4), knn_k=3)
    assert result.precision_at_k == pytest.approx(expected.precision_at_k)
    assert result.mean_average_precision == pytest.approx(expected.mean_average_precision)
    folders = index.evaluate(ks=(1, 4), knn_k=3)
    assert folders.mean_average_precision != pytest.approx(result.mean_average_precision)
    assert index.labels(csv_file) == labels


def test_read_label_file_sniffs_and_reports_lines(tmp_path: Path) -> None:
    tsv = tmp_path / "l.tsv"
    tsv.write_text("a/x.png\tcat\n\nb, y.jpg\tdog\t\n")  # no header, a blank line, a trailing tab
    assert [(r.path, r.label, r.line) for r in read_label_file(tsv)] == [("a/x.png", "cat", 1), ("b, y.jpg", "dog", 3)]
    semi = tmp_path / "l.txt"
    semi.write_text("file;class\nx.png;1\n")
    assert [(r.path, r.label) for r in read_label_file(semi)] == [("x.png", "1")]
    quoted = tmp_path / "q.csv"
    quoted.write_text('"with, comma.png",cat\nplain.png,dog\n')
    assert [r.path for r in read_label_file(quoted)] == ["with, comma.png", "plain.png"]
    for text, message in [
        ("path,label\na.png,cat\nb.png\n", r"bad\.csv: line 3: expected 2 fields"),
        ("a.png,cat,extra\nb.png,dog,x\n", r"bad\.csv: line 1: expected 2 fields"),
        ("a.png,cat\n,dog\n", r"bad\.csv: line 2: empty path"),
        ("a.png,cat\nb.png,dog\na.png,dog\n", r"bad\.csv: line 3: a\.png is labelled 'cat' on line 1"),
        ("path,label\n", r"bad\.csv: no path,label rows"),
    ]:
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(LookalikeError, match=message):
            read_label_file(tmp_path / "bad.csv")
    with pytest.raises(LookalikeError, match="labels file not found"):
        read_label_file(tmp_path / "missing.csv")


def test_without_labels_the_error_says_where_they_come_from(trained_model_dir: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in make_class_images(tmp_path / "src", per_class=2, size=16)["warm"]:
        shutil.copy(p, flat / p.name)
    index = Index.build(flat, trained_model_dir, tmp_path / "idx", num_workers=0)
    with pytest.raises(LookalikeError, match="none of the 2 indexed images has a label.*--labels"):
        index.evaluate()
    (tmp_path / "other.csv").write_text("elsewhere/a.png,x\n")
    with pytest.raises(LookalikeError, match=r"other\.csv: none of its 1 rows names one of the 2 indexed images"):
        index.evaluate(labels=tmp_path / "other.csv")
    (tmp_path / "queries").mkdir()
    shutil.copy(flat / "warm_00.jpg", tmp_path / "queries")
    with pytest.raises(LookalikeError, match="none of the 1 query images has a label"):
        Index.build(tmp_path / "src", trained_model_dir, num_workers=0).evaluate(tmp_path / "queries")
    lonely = Index.build(tmp_path / "src" / "cool", trained_model_dir, num_workers=0)  # no folder: no labels
    with pytest.raises(LookalikeError, match="none of the 2 indexed images has a label"):
        lonely.evaluate()
    two = tmp_path / "two"
    shutil.copytree(tmp_path / "src", two)
    (two / "warm" / "warm_01.png").unlink()
    (two / "cool" / "cool_01.png").unlink()
    one_each = Index.build(two, trained_model_dir, num_workers=0)
    with pytest.raises(LookalikeError, match="no query has another image with its label"):
        one_each.evaluate()


# ------------------------------------------------------------------------------------------- the CLI
def test_cli_leave_one_out_with_json_and_plots(built_index_dir: Path, tmp_path: Path) -> None:
    before = tree_snapshot(built_index_dir)
    out_json, plots = tmp_path / "eval.json", tmp_path / "plots"
    result = run_cli("evaluate", built_index_dir, "-k", "10", "--knn", "5", "--json", out_json, "--plot-dir", plots)
    assert result.exit_code == 0, result.output
    assert "mAP@10" in result.output and "precision@1 " in result.output and "5-NN accuracy" in result.output
    assert "24 queries, leave-one-out over 24 labelled indexed images" in result.output
    payload = json.loads(out_json.read_text())
    assert payload["n_queries"] == 24 and payload["map_k"] == 10 and payload["knn_k"] == 5
    assert payload["metric"] == "cosine" and payload["info"]["queries"] == "leave-one-out"
    assert set(payload["precision_at_k"]) == {"1", "5", "10", "20", "100", "1000"}
    assert len(payload["precision_curve"]) == 24
    expected = Index.load(built_index_dir).evaluate(map_at=10, knn_k=5)
    assert payload["map_at_k"] == pytest.approx(expected.map_at_k)
    for name in ("precision_at_k.png", "examples.png"):
        with Image.open(plots / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
    assert tree_snapshot(built_index_dir) == before  # nothing written into the index


def test_cli_query_folder_labels_file_and_euclidean(built_index_dir: Path, class_folder: Path, tmp_path: Path) -> None:
    make_class_images(tmp_path / "queries", per_class=2, seed=9)
    labels = tmp_path / "labels.tsv"
    rows = [f"{p.relative_to(class_folder).as_posix()}\t{p.parent.name}" for p in sorted(class_folder.rglob("*_0*"))]
    rows += [
        f"{p.relative_to(tmp_path / 'queries').as_posix()}\t{p.parent.name}"
        for p in (tmp_path / "queries").rglob("*.*")
    ]
    labels.write_text("\n".join(rows) + "\n")
    result = run_cli("evaluate", built_index_dir, "--queries", tmp_path / "queries", "--labels", labels,
                 "--metric", "euclidean", "--workers", "0", "--json", tmp_path / "e.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "e.json").read_text())
    assert payload["metric"] == "euclidean" and payload["n_queries"] == 4
    assert payload["n_database"] == 20 and payload["info"]["n_database_unlabelled"] == 4  # *_10, *_11 unlisted
    assert "left out 4 indexed images without a label" in result.output


def test_cli_malformed_labels_file_is_one_error_line(built_index_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("path,label\ncool/cool_00.jpg,cool\ncool/cool_01.png\n")
    line = one_error_line(run_cli("evaluate", built_index_dir, "--labels", bad))
    assert "labels.csv: line 3: expected 2 fields" in line
    assert "labels file not found" in one_error_line(
        run_cli("evaluate", built_index_dir, "--labels", tmp_path / "no.csv")
    )
    assert "metric" in one_error_line(run_cli("evaluate", built_index_dir, "--metric", "hamming"))
    assert "map_at must be at least 1" in one_error_line(run_cli("evaluate", built_index_dir, "-k", "0"))
    assert "not a lookalike index" in one_error_line(run_cli("evaluate", tmp_path))
    assert "folder does not exist" in one_error_line(run_cli("evaluate", built_index_dir, "-q", tmp_path / "nope"))


def test_cli_finds_the_index_inside_a_folder_and_reports_missing_labels(
    class_folder: Path, trained_model_dir: Path, built_index_dir: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copytree(built_index_dir, photos / ".lookalike")
    result = run_cli("evaluate", photos, "--knn", "3")
    assert result.exit_code == 0, result.output
    assert "3-NN accuracy" in result.output
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(class_folder.rglob("*_0[0-2]*")):
        shutil.copy(p, flat / p.name)
    Index.build(flat, trained_model_dir, flat / ".lookalike", num_workers=0)
    line = one_error_line(run_cli("evaluate", flat))
    assert "none of the 6 indexed images has a label" in line and "--labels" in line


def test_precision_curves_compare_runs(tmp_path: Path) -> None:
    from lookalike.metrics import EvaluationResult
    from lookalike.plots import precision_at_k_curve

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    vectors = rng.standard_normal((60, 8)) + labels[:, None]
    runs = {m: evaluate_vectors(vectors, labels, metric=m, ks=(1, 10, 100)) for m in ("cosine", "euclidean")}
    runs["saved"] = EvaluationResult.from_dict(json.loads(json.dumps(runs["cosine"].to_dict())))
    path = precision_at_k_curve(runs, tmp_path / "curves.png", title="three runs")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert precision_at_k_curve(runs["cosine"], tmp_path / "one.png").is_file()


# -------------------------------------------------------------------------------------- end to end
def make_stripes(root: Path, per_class: int = 40, size: int = 32, seed: int = 0) -> None:
    """Horizontal and vertical grey stripes with random widths, phases and brightness.

    Grey, because an autoencoder's embedding is dominated by colour: with random colours per image the
    nearest neighbours share colours, not orientations, and k-NN accuracy stays at chance.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for name, coord in (("horizontal", yy), ("vertical", xx)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            on = np.sin(coord / rng.uniform(1.5, 2.5) + rng.uniform(0, 2 * np.pi)) > 0
            img = np.where(on, rng.uniform(180, 255), rng.uniform(0, 70))[..., None] + rng.normal(0, 6, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")


def test_a_trained_model_separates_two_kinds_of_stripes(tmp_path: Path) -> None:
    make_stripes(tmp_path / "stripes")
    model = train(tmp_path / "stripes", epochs=6, batch_size=16, seed=0)
    index = Index.build(tmp_path / "stripes", model, num_workers=0)
    result = index.evaluate(ks=(1, 5, 10), map_at=20, knn_k=5)
    assert result.n_queries == 80 and result.chance_precision == pytest.approx(39 / 79)
    summary = result.to_dict()
    assert result.knn_accuracy >= 0.9, summary  # chance: 0.5
    assert result.precision_at_k[10] >= 0.9, summary
    assert result.map_at_k >= 0.75, summary
    assert result.mean_average_precision >= 0.6, summary  # the whole ranking, tail included


def test_label_depth_chooses_the_level_of_nested_labels(tmp_path: Path) -> None:
    """photos/DOMAIN/CLASS: by default the label is DOMAIN/CLASS; --label-depth -1 scores by CLASS across
    domains, 1 by DOMAIN; compare takes the same option."""
    from lookalike import comparison as cmp

    for domain in ("photo", "sketch"):
        make_class_images(tmp_path / "photos" / domain, per_class=6, size=16, seed=len(domain))
    idx = Index.build(tmp_path / "photos", "pixels@8", num_workers=0)
    whole = idx.evaluate(map_at=10)
    by_class = idx.evaluate(map_at=10, label_depth=-1)
    by_domain = idx.evaluate(map_at=10, label_depth=1)
    assert sorted(set(whole.query_labels)) == ["photo/cool", "photo/warm", "sketch/cool", "sketch/warm"]
    assert sorted(set(by_class.query_labels)) == ["cool", "warm"]
    assert sorted(set(by_domain.query_labels)) == ["photo", "sketch"]
    assert by_class.chance_precision > whole.chance_precision  # twice the relevant images per query
    result = run_cli("evaluate", tmp_path / "photos", "-e", "pixels@8", "--label-depth", "-1", "--json",
                     tmp_path / "e.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e.json").read_text())["map_at_k"] == pytest.approx(
        lookalike.Index.build(tmp_path / "photos", "pixels@8", num_workers=0).evaluate(label_depth=-1).map_at_k
    )
    comp = cmp.compare(tmp_path / "photos", extractors=["pixels@8"], label_depth=-1, map_at=10)
    assert sorted(set(comp.labels)) == ["cool", "warm"] and comp.info["labels"] == "sub-folders (depth -1)"
