"""ANN backends wired into the index: chosen, saved beside the shards, reloaded, rebuilt when stale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lookalike.index import HNSWIndex, IVFPQIndex
from lookalike.search import ANN_SUBDIR, Index

from .conftest import one_error_line, run_cli


@pytest.fixture
def index_copy(class_folder: Path, tmp_path: Path) -> Path:
    """A writable copy of the shared index (and of its images, which updates read)."""
    images = tmp_path / "images"
    shutil.copytree(class_folder, images)
    out = tmp_path / "idx"
    r = run_cli("index", images, "-o", out, "-e", "pixels", "--image-size", "8")
    assert r.exit_code == 0, r.output
    return out


def _ranked(idx: Index, k: int = 5) -> list[list[int]]:
    return [[h.id for h in hits] for hits in idx.search_batch(sorted(idx.entries), k)]


@pytest.mark.parametrize(("backend", "cls"), [("hnsw", HNSWIndex), ("ivfpq", IVFPQIndex)])
def test_ann_backend_answers_like_exact_and_is_saved(index_copy: Path, backend: str, cls: type) -> None:
    idx = Index.load(index_copy)
    exact = _ranked(idx)
    assert idx.use_backend("auto") == "exact" and idx.searcher is idx.vectors  # 24 vectors: exact
    assert idx.use_backend(backend) == backend and isinstance(idx.searcher, cls)
    assert _ranked(idx) == exact  # 24 vectors: the graph finds them all; IVF-PQ holds them exactly until trained
    idx.save_backend()
    assert json.loads((index_copy / "manifest.json").read_text())["backend"] == backend
    again = Index.load(index_copy)
    assert again.backend == backend and isinstance(again.searcher, cls) and _ranked(again) == exact
    # back to exact: the saved structure goes
    again.use_backend("exact")
    again.save_backend()
    assert not (index_copy / ANN_SUBDIR).exists() and Index.load(index_copy).backend == "exact"


def test_cli_backend_option_and_a_stale_structure(index_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = Path(Index.load(index_copy).root)
    r = run_cli("index", images, "-o", index_copy, "--backend", "hnsw")
    assert r.exit_code == 0, r.output
    assert "search backend: hnsw" in r.output and (index_copy / ANN_SUBDIR / "signature.json").is_file()
    victim = sorted(images.rglob("*.png"))[0]
    victim.unlink()
    # updated by the library without re-saving the structure: it is stale, rebuilt in memory with a warning
    idx = Index.load(index_copy)
    idx.update()
    fresh = Index.load(index_copy)
    assert fresh.backend == "hnsw" and len(fresh) == 23 and "stale" in caplog.text
    assert all(h.path != victim for hits in fresh.search_batch(sorted(fresh.entries), 23) for h in hits)
    # the CLI's next run saves it again, keeping the index's backend
    r = run_cli("index", images, "-o", index_copy)
    assert r.exit_code == 0 and "search backend: hnsw" in r.output
    caplog.clear()
    assert Index.load(index_copy).backend == "hnsw" and "stale" not in caplog.text
    r = run_cli("index", images, "-o", index_copy, "--backend", "annoy")
    assert r.exit_code == 1 and "--backend must be one of" in one_error_line(r)
