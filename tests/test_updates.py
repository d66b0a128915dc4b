"""Incremental indexing: an index folder updated in place (added, changed, moved, deleted, unreadable files),
explicit add/remove, model checks, compaction, leftovers of killed runs, and version-1 folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import Index, LookalikeError, Model
from lookalike.catalog import Catalog
from lookalike.store import StoreWriter, shard_path

from .conftest import make_class_images, one_error_line, run_cli, tree_snapshot


@pytest.fixture(scope="module")
def pixels() -> Model:
    return Model.pretrained("pixels", image_size=8)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    make_class_images(root, per_class=10, size=16)
    return root


def build(folder: Path, model: Model, out: Path, **kw) -> Index:
    return Index.build(folder, model, out, num_workers=0, shard_size=kw.pop("shard_size", 4), **kw)


def by_path(index: Index) -> dict[str, tuple[str, np.ndarray]]:
    """path -> (sha256, raw vector) of every indexed image."""
    return {e.path: (e.sha256, index.vectors.reconstruct([i])[0]) for i, e in index.entries.items()}


def assert_same_as_clean_build(index: Index, folder: Path, model: Model, tmp_path: Path) -> None:
    clean = build(folder, model, tmp_path / "clean", shard_size=4096)
    got, want = by_path(Index.load(index.directory)), by_path(clean)
    assert got.keys() == want.keys()
    for path, (sha, vec) in want.items():
        assert got[path][0] == sha
        np.testing.assert_allclose(got[path][1], vec, rtol=1e-6, atol=1e-6)
    shutil.rmtree(tmp_path / "clean")


def test_rerun_embeds_only_what_changed(folder: Path, pixels: Model, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    first = build(folder, pixels, out)
    assert first.last_update.added == 20 and first.last_update.rebuilt and len(first) == 20
    assert len(list(out.glob("vectors-*.npy"))) == 5  # shards of 4

    again = build(folder, pixels, out)
    s = again.last_update
    assert (s.unchanged, s.added, s.embedded, s.rebuilt) == (20, 0, 0, False)
    ids_before = {e.path: i for i, e in again.entries.items()}

    os.rename(folder / "warm" / "warm_00.jpg", folder / "cool" / "moved.jpg")  # moved across labels
    (folder / "cool" / "cool_01.png").unlink()  # deleted
    Image.new("RGB", (16, 16), (10, 200, 30)).save(folder / "warm" / "warm_03.png")  # changed content
    os.utime(folder / "warm" / "warm_05.png", ns=(1, 1))  # touched: same bytes, other mtime
    Image.new("RGB", (16, 16), (250, 250, 0)).save(folder / "new.png")  # new
    shutil.copy(folder / "cool" / "cool_02.jpg", folder / "copy.jpg")  # a copy of an indexed image
    (folder / "warm" / "broken.jpg").write_bytes(b"not a jpeg")  # unreadable

    s = again.update(num_workers=0, shard_size=4)
    assert (s.added, s.updated, s.moved, s.removed, s.skipped) == (2, 1, 1, 1, 1)
    assert s.unchanged == 17  # 16 untouched + the touched one, recognised by its hash
    assert s.embedded == 2  # new.png and the changed warm_03.png; the copy shares cool_02's vector
    entries = {e.path: e for e in again.entries.values()}
    assert entries["cool/moved.jpg"].id == ids_before["warm/warm_00.jpg"]  # same id, new path and label
    assert entries["cool/moved.jpg"].label == "cool"
    assert entries["warm/warm_03.png"].id == ids_before["warm/warm_03.png"]  # changed files keep their id
    assert entries["warm/warm_05.png"].mtime_ns == 1
    assert "cool/cool_01.png" not in entries and len(again) == 21
    assert [Path(x["path"]).name for x in again.manifest["skipped"]] == ["broken.jpg"]
    assert_same_as_clean_build(again, folder, pixels, tmp_path)

    s = again.update(num_workers=0)  # nothing changed: nothing read again, the unreadable file included
    assert (s.unchanged, s.skipped, s.embedded, s.changed) == (21, 1, 0, False)

    (folder / "warm" / "broken.jpg").unlink()
    shutil.copy(folder / "cool" / "cool_04.jpg", folder / "warm" / "broken.jpg")  # fixed: now readable
    s = again.update(num_workers=0)
    assert (s.added, s.skipped) == (1, 0) and again.manifest["skipped"] == []


def test_swapped_files_and_a_file_changed_into_an_unreadable_one(folder: Path, pixels: Model, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    index = build(folder, pixels, out)
    a, b = folder / "cool" / "cool_00.jpg", folder / "cool" / "cool_02.jpg"
    tmp = folder / "swap.tmp"
    os.rename(a, tmp), os.rename(b, a), os.rename(tmp, b)
    (folder / "warm" / "warm_01.png").write_bytes(b"garbage now")
    s = index.update(num_workers=0)
    assert (s.moved, s.removed, s.skipped, s.embedded) == (2, 1, 1, 0)
    assert len(index) == 19
    assert_same_as_clean_build(index, folder, pixels, tmp_path)


def test_deleting_most_files_compacts_the_shards(folder: Path, pixels: Model, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    index = build(folder, pixels, out)
    for p in sorted(folder.rglob("*_0[0-6].*")):
        p.unlink()
    s = index.update(num_workers=0, shard_size=4)
    assert s.removed == 14 and s.compacted
    catalog = Catalog.open(out / "catalog.sqlite")
    stored, live = catalog.shard_rows(), catalog.live_rows()
    catalog.close()
    assert sum(stored.values()) == sum(live.values()) == 6  # no dead rows left
    assert sorted(p.name for p in out.glob("vectors-*.npy")) == [shard_path(out, n).name for n in sorted(stored)]
    assert_same_as_clean_build(index, folder, pixels, tmp_path)


def test_explicit_add_and_remove(folder: Path, pixels: Model, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    extra = folder / "later"
    shutil.move(folder / "warm", tmp_path / "aside")  # not there when the index is built
    index = build(folder, pixels, out)
    assert len(index) == 10
    shutil.move(tmp_path / "aside", extra)
    s = index.add([extra / "warm_00.jpg", extra], num_workers=0)
    assert (s.added, s.embedded, len(index)) == (10, 10, 20)
    assert index.add([extra / "warm_01.png"], num_workers=0).unchanged == 1
    with pytest.raises(LookalikeError, match="not inside the indexed folder"):
        index.add([tmp_path])
    with pytest.raises(LookalikeError, match="no such file"):
        index.add([folder / "nope.jpg"])
    s = index.remove([extra / "warm_00.jpg"])
    assert s.removed == 1 and len(index) == 19 and index.id_of(extra / "warm_00.jpg") is None
    (folder / "cool" / "cool_03.png").unlink()
    s = index.remove(["cool"])  # a folder, relative to the root; its files need not exist
    assert s.removed == 10 and len(index) == 9
    with pytest.raises(LookalikeError, match="no indexed image there"):
        index.remove(["cool"])
    assert len(Index.load(out)) == 9
    assert index.search(extra / "warm_02.jpg", k=1)[0].path == (extra / "warm_02.jpg").resolve()


def test_an_index_refuses_to_mix_models(folder: Path, pixels: Model, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    build(folder, pixels, out)
    before = tree_snapshot(out)
    with pytest.raises(LookalikeError, match=r"built with pixels model .*\(192-d, 8 px\).*768-d.*--rebuild"):
        build(folder, Model.pretrained("pixels", image_size=16), out)
    assert tree_snapshot(out) == before
    rebuilt = build(folder, Model.pretrained("pixels", image_size=16), out, rebuild=True)
    assert rebuilt.last_update.rebuilt and rebuilt.vectors.dim == 768 and len(rebuilt) == 20


def test_killed_runs_leave_files_that_the_next_run_removes(folder: Path, pixels: Model, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    index = build(folder, pixels, out)
    n = len(list(out.glob("vectors-*.npy")))
    # what a kill between writing a shard and committing it, or during a write, leaves behind
    np.save(shard_path(out, n), np.ones((4, 192), np.float32))
    (out / f".vectors-{n + 1:05d}.npy.abc.tmp").write_bytes(b"half")
    assert len(Index.load(out)) == 20  # readers ignore them
    Image.new("RGB", (16, 16), (1, 2, 3)).save(folder / "new.png")
    s = index.update(num_workers=0)
    assert s.leftovers_removed == 2 and s.added == 1
    assert not list(out.glob(".*.tmp"))
    assert_same_as_clean_build(index, folder, pixels, tmp_path)


def test_a_second_writer_is_refused(folder: Path, pixels: Model, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    build(folder, pixels, out)
    with StoreWriter(out, 192), pytest.raises(LookalikeError, match="another lookalike process is writing"):
        build(folder, pixels, out)


def test_version_1_indexes_load_and_are_rebuilt(folder: Path, pixels: Model, tmp_path: Path) -> None:
    from lookalike.index import ExactIndex

    built = build(folder, pixels, tmp_path / "v2")
    old = tmp_path / "v1"
    old.mkdir()
    pixels.save(old / "model")
    ExactIndex.save(built.vectors, old)  # vectors.npy, norms.npy, ids.npy
    catalog = Catalog.create(old / "catalog.sqlite")
    catalog.add(built.entries.values())
    catalog.close()
    (old / "manifest.json").write_text(json.dumps({**built.manifest, "format_version": 1}))
    v1 = Index.load(old)
    assert len(v1) == 20 and v1.search(0, k=1)[0].id == 0
    with pytest.raises(LookalikeError, match="cannot be updated in place; rebuild it"):
        v1.update()
    again = build(folder, None, old)  # the index's own model; written anew in format 2
    assert again.last_update.rebuilt and again.manifest["format_version"] == 2
    assert not (old / "vectors.npy").exists()


def test_cli_index_update_add_remove(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    args = ("-e", "pixels", "--image-size", "8", "--workers", "0")
    result = run_cli("index", folder, "-o", out, *args)
    assert result.exit_code == 0, result.output
    assert "indexed 20 images" in result.output and "added 20" in result.output
    os.rename(folder / "cool" / "cool_00.jpg", folder / "renamed.jpg")
    (folder / "warm" / "warm_00.jpg").unlink()
    result = run_cli("index", folder, "-o", out, "--workers", "0")  # no model given: the index's own
    assert result.exit_code == 0, result.output
    assert "added 0, updated 0, moved 1, removed 1, unchanged 18" in result.output
    result = run_cli("remove", out, folder / "warm")
    assert result.exit_code == 0 and "indexed 10 images" in result.output, result.output
    result = run_cli("add", out, folder / "warm", "--workers", "0")
    assert result.exit_code == 0 and "added 9" in result.output, result.output
    line = one_error_line(run_cli("index", folder, "-o", out, "-e", "pixels", "--image-size", "16"))
    assert "--rebuild" in line and "8 px" in line
    result = run_cli("index", folder, "-o", out, "-e", "pixels", "--image-size", "16", "--rebuild", "--workers", "0")
    assert result.exit_code == 0 and "new index" in result.output, result.output
