"""Near-duplicate groups: range search against brute force, grouping, files, the command line."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.duplicates import (
    CALIBRATED,
    DuplicateGroup,
    calibration_for,
    check_threshold,
    find_duplicates,
    group_rows,
    similar_pairs,
    to_csv_bytes,
    write_csv,
    write_json,
)
from lookalike.errors import LookalikeError

from .conftest import one_error_line, run_cli

N_DISTINCT = 6


def _pattern(seed: int, size: int = 64) -> np.ndarray:
    """A smooth, high-contrast random colour field: independent seeds give unrelated images."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def copies_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six distinct images; image 0 has an exact copy, image 1 a resized copy, image 2 a JPEG re-save."""
    root = tmp_path_factory.mktemp("dups")
    for i in range(N_DISTINCT):
        Image.fromarray(_pattern(i)).save(root / f"img{i}.png")
    shutil.copy(root / "img0.png", root / "img0_copy.png")
    Image.open(root / "img1.png").resize((40, 40), Image.Resampling.BICUBIC).save(root / "img1_small.png")
    Image.open(root / "img2.png").save(root / "img2_resaved.jpg", quality=40)
    return root


@pytest.fixture(scope="module")
def pixels_index_dir(copies_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lookalike.search import Index

    out = tmp_path_factory.mktemp("dup-index") / "index"
    Index.build(copies_folder, "pixels", out, num_workers=0)
    return out


def _names(group: DuplicateGroup) -> set[str]:
    return {p.name for p in group.paths}


def test_copies_are_grouped_and_distinct_images_are_not(pixels_index_dir: Path) -> None:
    from lookalike.search import Index

    index = Index.load(pixels_index_dir)
    groups = find_duplicates(index)  # the calibrated default for pixels
    assert sorted(map(_names, groups), key=sorted) == [
        {"img0.png", "img0_copy.png"},
        {"img1.png", "img1_small.png"},
        {"img2.png", "img2_resaved.jpg"},
    ]
    for g in groups:
        assert len(g) == len(g.ids) == len(g.paths) == len(g.similarities) == 2
        assert g.similarities[0] == 1.0 and g.min_similarity == pytest.approx(g.similarities[1], abs=1e-5)
        assert g.max_similarity >= g.min_similarity >= CALIBRATED["pixels"].threshold
    exact = [g for g in groups if _names(g) == {"img0.png", "img0_copy.png"}][0]
    assert exact.similarities[1] == pytest.approx(1.0, abs=1e-6)
    # threshold 1: only the identical pair (float32 rounding is absorbed by the slack)
    assert list(map(_names, find_duplicates(index, 1.0))) == [{"img0.png", "img0_copy.png"}]


def _brute_pairs(x: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.nonzero(np.triu(u @ u.T >= t - 1e-6, 1))


@pytest.mark.parametrize("batch", [1, 7, 64, 199, 200, 201, None])
def test_range_search_equals_brute_force(batch: int | None) -> None:
    x = np.random.default_rng(1).standard_normal((200, 6)).astype(np.float32)
    for t in (-0.5, 0.0, 0.6, 0.9, 0.97, 1.0):
        i, j, s = similar_pairs(x, t, method="exact", batch=batch)
        bi, bj = _brute_pairs(x, t)
        assert np.array_equal(i, bi) and np.array_equal(j, bj), (t, batch)
        assert np.all(s >= t - 1e-6)


def _brute_components(n: int, i: np.ndarray, j: np.ndarray) -> set[frozenset[int]]:
    adj: dict[int, set[int]] = {k: set() for k in range(n)}
    for a, b in zip(i.tolist(), j.tolist()):
        adj[a].add(b)
        adj[b].add(a)
    seen: set[int] = set()
    out = set()
    for start in range(n):
        if start in seen or not adj[start]:
            continue
        stack, comp = [start], set()
        while stack:
            v = stack.pop()
            if v not in comp:
                comp.add(v)
                stack.extend(adj[v] - comp)
        seen |= comp
        out.add(frozenset(comp))
    return out


def test_groups_are_the_connected_components() -> None:
    x = np.random.default_rng(2).standard_normal((400, 5)).astype(np.float32)
    for t in (0.9, 0.95, 0.99):
        groups = group_rows(x, t, batch=33)
        assert {frozenset(g[0].tolist()) for g in groups} == _brute_components(len(x), *_brute_pairs(x, t))
        sizes = [len(g[0]) for g in groups]
        assert sizes == sorted(sizes, reverse=True)


def test_hnsw_finds_the_clusters_exact_finds() -> None:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((50, 16))
    x = (np.repeat(centres, 4, axis=0) + 0.02 * rng.standard_normal((200, 16))).astype(np.float32)
    exact = {frozenset(g[0].tolist()) for g in group_rows(x, 0.98, method="exact")}
    approx = {frozenset(g[0].tolist()) for g in group_rows(x, 0.98, method="hnsw", k=8, batch=17)}
    assert exact == approx == {frozenset(range(4 * c, 4 * c + 4)) for c in range(50)}


def test_single_linkage_chains_and_star_splits_the_chain() -> None:
    angles = np.arange(10) * 0.2  # neighbours 0.98 alike, the ends cos(1.8) = -0.23
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    (single,) = group_rows(x, 0.95)
    assert len(single[0]) == 10 and single[3] < 0  # min pairwise similarity shows the chain
    stars = group_rows(x, 0.95, linkage="star")
    assert sum(len(g[0]) for g in stars) <= 10 and all(len(g[0]) <= 3 for g in stars)
    for _rows, to_first, *_ in stars:
        assert np.all(to_first >= 0.95 - 1e-6)


def test_thresholds_are_checked() -> None:
    for bad in (-1.0, -1.5, 1.01, float("nan")):
        with pytest.raises(LookalikeError, match=r"threshold must be a cosine similarity in \(-1, 1\]"):
            check_threshold(bad)
    assert check_threshold(1) == 1.0
    with pytest.raises(LookalikeError, match="--threshold"):
        calibration_for("efficientnet-lite0+neighbours")
    assert set(CALIBRATED) >= {"autoencoder", "efficientnet-lite0", "pixels"}
    for cal in CALIBRATED.values():
        assert -1 < cal.threshold <= 1 and 0 <= cal.recall <= 1 and 0 <= cal.precision <= 1


def test_csv_and_json_files(pixels_index_dir: Path, tmp_path: Path) -> None:
    from lookalike.search import Index

    groups = find_duplicates(Index.load(pixels_index_dir), 0.9)
    csv_path = write_csv(groups, tmp_path / "out" / "dups.csv")
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(rows) == sum(len(g) for g in groups)
    assert {r["group"] for r in rows} == {str(n) for n in range(1, len(groups) + 1)}
    assert all(Path(r["path"]).is_file() and -1 <= float(r["similarity"]) <= 1.0 for r in rows)
    assert csv_path.read_bytes() == to_csv_bytes(groups)
    json_path = write_json(groups, tmp_path / "out" / "dups.json", threshold=0.9)
    data = json.loads(json_path.read_text())
    assert data["format"] == "lookalike-duplicates" and data["threshold"] == 0.9
    assert [len(g["members"]) for g in data["groups"]] == [len(g) for g in groups]
    assert data["groups"][0]["members"][0]["similarity"] == 1.0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dups.csv", "dups.json"]  # no temp files
    with pytest.raises(LookalikeError, match="is a folder"):
        write_csv(groups, tmp_path)


def test_cli_prints_groups_and_writes_files(pixels_index_dir: Path, tmp_path: Path) -> None:
    result = run_cli("duplicates", pixels_index_dir, "--csv", tmp_path / "d.csv", "--json", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "near-duplicate groups" in text and "3 groups holding 6 of 9 images" in text
    assert "calibrated default for pixels" in text
    rows = list(csv.DictReader(io.StringIO((tmp_path / "d.csv").read_text())))
    assert {Path(r["path"]).name for r in rows} == {
        "img0.png",
        "img0_copy.png",
        "img1.png",
        "img1_small.png",
        "img2.png",
        "img2_resaved.jpg",
    }
    assert json.loads((tmp_path / "d.json").read_text())["extractor"] == "pixels"
    result = run_cli("duplicates", pixels_index_dir, "-t", "1", "--limit", "0", "--linkage", "star")
    assert result.exit_code == 0, result.output
    assert "1 groups holding 2 of 9 images at threshold 1.000 (given; star linkage)" in " ".join(result.output.split())


def test_cli_errors_are_one_line(pixels_index_dir: Path, tmp_path: Path) -> None:
    assert "not a lookalike index" in one_error_line(run_cli("duplicates", tmp_path))
    for bad in ("-1", "1.5"):
        line = one_error_line(run_cli("duplicates", pixels_index_dir, "--threshold", bad))
        assert "threshold must be a cosine similarity in (-1, 1]" in line
    assert "--linkage" in one_error_line(run_cli("duplicates", pixels_index_dir, "--linkage", "complete"))
    assert "is a folder" in one_error_line(run_cli("duplicates", pixels_index_dir, "--csv", tmp_path))


def test_help_states_the_calibrated_defaults() -> None:
    result = run_cli("duplicates", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())  # rich draws the options in a box
    for name, cal in CALIBRATED.items():
        assert f"{name} {cal.threshold:.3f}" in text
        assert f"{cal.recall:.1%}".replace("%", " %") in text
