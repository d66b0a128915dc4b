"""The Python API: build, save, load and query an index; bad queries and mismatched models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import Hit, Index, LookalikeError, Model
from lookalike.training import train

from .conftest import tree_snapshot


@pytest.fixture(scope="module")
def index(built_index_dir: Path) -> Index:
    return Index.load(built_index_dir)


def test_index_dir_layout_and_catalog(built_index_dir: Path, class_folder: Path, index: Index) -> None:
    names = {p.name for p in built_index_dir.iterdir()}
    assert {"manifest.json", "catalog.sqlite", "vectors-00000.npy", "model"} <= names
    manifest = json.loads((built_index_dir / "manifest.json").read_text())
    assert manifest["count"] == 24 == len(index)
    assert manifest["root"] == str(class_folder.resolve())
    assert manifest["model"]["fingerprint"] == Model.load(built_index_dir / "model").fingerprint
    entry = index.entries[0]
    source = class_folder / entry.path
    assert entry.path == "cool/cool_00.jpg" and entry.label == "cool"
    assert entry.size == source.stat().st_size and entry.mtime_ns == source.stat().st_mtime_ns
    import hashlib

    assert entry.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    np.testing.assert_allclose(np.linalg.norm(index.vectors.vectors, axis=1), 1.0, rtol=1e-5)


def test_search_by_file_finds_itself_first(index: Index, class_folder: Path) -> None:
    query = class_folder / "warm" / "warm_03.png"
    hits = index.search(query, k=5)
    assert isinstance(hits[0], Hit) and hits[0].path == query.resolve()
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    excluded = index.search(query, k=5, exclude_self=True)
    assert query.resolve() not in [h.path for h in excluded]
    assert [h.id for h in excluded[:4]] == [h.id for h in hits[1:5]]


def test_query_is_prepared_exactly_like_indexed_images(index: Index, class_folder: Path) -> None:
    query = class_folder / "cool" / "cool_05.png"
    own = index.id_of(query)
    np.testing.assert_allclose(index.model.embed([query])[0], index.vectors.reconstruct([own])[0], rtol=1e-4, atol=1e-5)
    by_path = index.search(query, k=4)
    by_pil = index.search(Image.open(query), k=4)
    by_array = index.search(np.asarray(Image.open(query)), k=4)
    by_id = index.search(own, k=4)
    ids = [h.id for h in by_path]
    assert [h.id for h in by_pil] == ids == [h.id for h in by_array] == [h.id for h in by_id]


def test_euclidean_ranks_raw_embeddings_by_distance(index: Index, class_folder: Path) -> None:
    query = class_folder / "warm" / "warm_00.jpg"
    q = index.model.embed([query])[0]
    raw = index.vectors.reconstruct(index.vectors.ids)
    dist = np.linalg.norm(raw - q, axis=1)
    hits = index.search(query, k=6, metric="euclidean")
    assert [h.id for h in hits] == index.vectors.ids[np.argsort(dist)[:6]].tolist()
    np.testing.assert_allclose([h.score for h in hits], np.sort(dist)[:6], rtol=1e-3, atol=1e-3)


def test_k_larger_than_the_index(index: Index) -> None:
    hits = index.search(0, k=100, exclude_self=True)
    assert len(hits) == len(index) - 1 and 0 not in [h.id for h in hits]


def test_bad_queries_name_the_file(index: Index, tmp_path: Path) -> None:
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    with pytest.raises(LookalikeError, match=r"notes\.jpg: not an image"):
        index.search(not_image)
    with pytest.raises(LookalikeError, match="no image with id 999"):
        index.search(999)
    with pytest.raises(LookalikeError, match="metric"):
        index.search(0, metric="manhattan")


def test_an_index_refuses_another_model(built_index_dir: Path, class_folder: Path, tmp_path: Path) -> None:
    other = train(class_folder, tmp_path / "other", epochs=1, image_size=16, seed=99)
    with pytest.raises(LookalikeError, match="built with model"):
        Index.load(built_index_dir, model=other)
    with pytest.raises(LookalikeError, match="built with model"):
        Index.load(built_index_dir, model=tmp_path / "other")
    assert Index.load(built_index_dir, model=built_index_dir / "model").model.fingerprint


def test_rebuild_replaces_atomically_and_failures_keep_the_old_index(
    class_folder: Path, trained_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "idx"
    Index.build(class_folder, trained_model_dir, out, num_workers=0)
    before = tree_snapshot(out)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_text("nope")
    with pytest.raises(LookalikeError, match="could be read"):
        Index.build(bad, trained_model_dir, out, num_workers=0)
    with pytest.raises(LookalikeError, match="does not exist"):
        Index.build(tmp_path / "missing", trained_model_dir, out, num_workers=0)
    assert tree_snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx")]  # no temp folders left
    small = tmp_path / "small"
    shutil.copytree(class_folder / "warm", small / "warm")
    rebuilt = Index.build(small, trained_model_dir, out, num_workers=0)
    assert len(Index.load(out)) == len(rebuilt) == 12


def test_refuses_to_write_over_a_folder_that_is_not_an_index(
    class_folder: Path, trained_model_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.txt").write_text("do not delete")
    with pytest.raises(LookalikeError, match="not a lookalike index"):
        Index.build(class_folder, trained_model_dir, target)
    assert (target / "thesis.txt").read_text() == "do not delete"


def test_unreadable_files_are_skipped_and_listed(class_folder: Path, trained_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(class_folder, folder)
    (folder / "cool" / "zz_truncated.png").write_bytes((folder / "cool" / "cool_01.png").read_bytes()[:60])
    (folder / "empty.jpg").write_bytes(b"")
    built = Index.build(folder, trained_model_dir, tmp_path / "idx", num_workers=1)
    assert len(built) == 24
    skipped = {Path(s["path"]).name: s["reason"] for s in built.manifest["skipped"]}
    assert set(skipped) == {"zz_truncated.png", "empty.jpg"}
    assert all(skipped.values())


def test_load_checks_format_and_consistency(built_index_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built_index_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LookalikeError, match="index format 99"):
        Index.load(copy)
    with pytest.raises(LookalikeError, match="not a lookalike index"):
        Index.load(tmp_path)
    with pytest.raises(LookalikeError, match="does not exist"):
        Index.load(tmp_path / "nothing")


def test_precision_is_recorded_and_bf16_matches_fp32(
    class_folder: Path, trained_model_dir: Path, tmp_path: Path
) -> None:
    fp32 = Index.build(class_folder, trained_model_dir, tmp_path / "fp32", precision="fp32", num_workers=0)
    bf16 = Index.build(class_folder, trained_model_dir, tmp_path / "bf16", precision="bf16", num_workers=0)
    assert Index.load(tmp_path / "fp32").model.precision == "fp32"
    assert Index.load(tmp_path / "bf16").model.precision == "bf16"
    a, b = fp32.vectors.vectors, bf16.vectors.vectors
    assert not np.array_equal(a, b)  # bf16 really ran
    assert np.min(np.sum(a * b, axis=1)) > 0.999  # cosine between the two encodings of each image
    query = class_folder / "cool" / "cool_02.jpg"
    assert [h.id for h in fp32.search(query, k=3)][:1] == [h.id for h in bf16.search(query, k=3)][:1]
    with pytest.raises(LookalikeError, match="precision"):
        Model.load(trained_model_dir).set_precision("fp8")


def test_saved_files_get_the_usual_permissions(class_folder: Path, trained_model_dir: Path, tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        Index.build(class_folder, trained_model_dir, tmp_path / "idx", num_workers=0)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "idx").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "idx" / "manifest.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "idx" / "model" / "model.safetensors").stat().st_mode) == 0o644
