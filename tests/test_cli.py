"""The command line: each verb end to end, and one-line errors with non-zero exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lookalike.models import Model

from .conftest import make_class_images, one_error_line, run_cli, tree_snapshot


def test_train_index_search_end_to_end(class_folder: Path, tmp_path: Path) -> None:
    model_dir, index_dir = tmp_path / "model", tmp_path / "index"
    result = run_cli("train", class_folder, "-o", model_dir, "-e", "autoencoder", "--epochs", "2", "--image-size", "16",
                     "--batch-size", "8")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "epoch 2: train loss" in result.output and (model_dir / "loss.png").exists()
    result = run_cli("index", class_folder, "--model", model_dir, "-o", index_dir, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "indexed 24 images" in result.output
    query = class_folder / "warm" / "warm_01.png"
    result = run_cli("search", index_dir, query, "-k", "3")
    assert result.exit_code == 0, result.output
    assert "warm_01.png" in result.output and "similarity" in result.output
    result = run_cli("search", index_dir, query, "5", "-k", "3", "--json", "--exclude-self", "--metric", "euclidean")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [p["query"] for p in payload] == [str(query), "5"]
    assert all(len(p["hits"]) == 3 for p in payload)
    assert str(query.resolve()) not in [h["path"] for h in payload[0]["hits"]]
    assert 5 not in [h["id"] for h in payload[1]["hits"]]
    scores = [h["score"] for h in payload[0]["hits"]]
    assert scores == sorted(scores)  # distances ascend
    plot = tmp_path / "out.png"
    result = run_cli("search", index_dir, query, "-k", "4", "--plot", plot)
    assert result.exit_code == 0, result.output
    assert Image.open(plot).size[0] > 200


def test_index_without_model_learns_the_default_first(tmp_path: Path) -> None:
    make_class_images(tmp_path / "photos", per_class=10, size=16)
    result = run_cli("index", tmp_path / "photos", "--epochs", "1", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "learning efficientnet-lite0@128's head on 20 images" in result.output
    manifest = json.loads((tmp_path / "photos" / ".lookalike" / "manifest.json").read_text())
    assert manifest["model"]["extractor"] == "efficientnet-lite0+adapted"
    # the folder itself can be searched, and the index inside it is not indexed as images
    result = run_cli("search", tmp_path / "photos", "0", "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    assert not any(".lookalike" in h["path"] for h in json.loads(result.stdout)[0]["hits"])
    # run again: the index keeps its model (nothing is learned again)
    again = run_cli("index", tmp_path / "photos", "--workers", "0")
    assert again.exit_code == 0 and "learning" not in again.output and "unchanged 20" in again.output


def test_train_without_flags_learns_the_default(class_folder: Path, tmp_path: Path) -> None:
    """`lookalike train FOLDER`: the head on Lite0, written beside the images (a hidden folder, so never
    indexed as images); autoencoder-only options say how to get the autoencoder."""
    import shutil

    folder = tmp_path / "imgs"
    shutil.copytree(class_folder, folder)
    result = run_cli("train", folder, "--epochs", "2", "--workers", "0")
    assert result.exit_code == 0, result.output
    model = Model.load(folder / ".lookalike-model")
    assert model.extractor == "efficientnet-lite0+adapted" and model.info["adaptation"]["epochs"] == 2
    assert f"use it: lookalike index {folder} -m {folder / '.lookalike-model'}" in result.output
    line = one_error_line(run_cli("train", folder, "--epochs", "2"))
    assert "already holds a model" in line
    line = one_error_line(run_cli("train", folder, "-o", tmp_path / "m", "--latent-dim", "8", "--lr", "0.1"))
    assert "--latent-dim, --lr: options of the autoencoder; add -e autoencoder to train it" in line
    line = one_error_line(run_cli("train", folder, "-o", tmp_path / "m", "--preset", "mnist-seed", "-e", "pixels"))
    assert "--preset is an autoencoder recipe" in line
    assert "pixels learns nothing" in one_error_line(run_cli("train", folder, "-o", tmp_path / "m", "-e", "pixels"))
    assert not (tmp_path / "m").exists()


def test_errors_are_one_line_and_leave_saved_things_alone(built_index_dir: Path, tmp_path: Path) -> None:
    line = one_error_line(run_cli("train", tmp_path / "nope", "-o", tmp_path / "m"))
    assert "nope: folder does not exist" in line
    (tmp_path / "empty").mkdir()
    assert "folder is empty" in one_error_line(run_cli("index", tmp_path / "empty", "-o", tmp_path / "i"))
    before = tree_snapshot(built_index_dir)
    bad = tmp_path / "bad.png"
    bad.write_text("this is not a png")
    assert "bad.png: not an image" in one_error_line(run_cli("search", built_index_dir, bad))
    assert "no such file" in one_error_line(run_cli("search", built_index_dir, tmp_path / "missing.jpg"))
    assert "not a lookalike index" in one_error_line(run_cli("search", tmp_path, "0"))
    assert "--metric" in one_error_line(run_cli("search", built_index_dir, "0", "--metric", "hamming"))
    assert "model format" in one_error_line(
        run_cli("index", tmp_path / "empty", "--model", _old_model(built_index_dir, tmp_path))
    )
    assert tree_snapshot(built_index_dir) == before


def _old_model(index_dir: Path, tmp_path: Path) -> Path:
    import shutil

    old = tmp_path / "old-model"
    shutil.copytree(index_dir / "model", old)
    config = json.loads((old / "config.json").read_text())
    config["format_version"] = 0
    (old / "config.json").write_text(json.dumps(config))
    return old


def test_datasets_export_and_list(tmp_path: Path) -> None:
    result = run_cli("datasets", "list")
    assert result.exit_code == 0 and "cifar10" in result.output and "digits" in result.output
    result = run_cli("datasets", "export", "digits", tmp_path / "digits", "--limit", "3")
    assert result.exit_code == 0, result.output
    classes = sorted(p.name for p in (tmp_path / "digits").iterdir())
    assert classes == [str(i) for i in range(10)]
    assert len(list((tmp_path / "digits").rglob("*.png"))) == 30
    assert "is not empty" in one_error_line(run_cli("datasets", "export", "digits", tmp_path / "digits"))


def test_demo_offline_falls_back_to_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("demo", "--no-download", "--epochs", "1", "--per-class", "6", "--queries", "2", "-k", "3")
    assert result.exit_code == 0, result.output
    first_line = result.output.split("wrote")[0]
    assert "not in the cache" in first_line and "digits" in first_line
    assert Image.open(tmp_path / "lookalike-demo" / "results.png").size[0] > 200
    assert (tmp_path / "lookalike-demo" / "index" / "manifest.json").exists()
    again = run_cli("demo", "--no-download", "--epochs", "1", "--per-class", "6", "--queries", "1")
    assert again.exit_code == 0, again.output  # a re-run replaces its own outputs
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    assert "not made by `lookalike demo`" in one_error_line(run_cli("demo", "-o", tmp_path / "mine", "--no-download"))


def test_demo_uses_a_cached_cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    cache = tmp_path / "cache" / "cifar10"
    cache.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10, dtype=np.int64), 4)
    images = (rng.random((40, 32, 32, 3)) * 60 + labels[:, None, None, None] * 19).astype(np.uint8)
    np.save(cache / "train_images.npy", images)
    np.save(cache / "train_labels.npy", labels)
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    result = run_cli("demo", "--epochs", "1", "--per-class", "3", "--queries", "2", "-k", "2")
    assert result.exit_code == 0, result.output
    assert "CIFAR-10" in result.output.split("wrote")[0] and "from cache" in result.output
    assert len(list((tmp_path / "lookalike-demo" / "images" / "airplane").glob("*.png"))) == 3
    assert (tmp_path / "lookalike-demo" / "results.png").exists()


def test_index_without_model_reports_each_bad_file_once(tmp_path: Path) -> None:
    make_class_images(tmp_path / "photos", per_class=4, size=16)
    (tmp_path / "photos" / "warm" / "broken.jpg").write_text("not a jpeg")
    result = run_cli("index", tmp_path / "photos", "--epochs", "1", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert result.output.count("broken.jpg") == 1
    assert "skipped 1 file" in result.output


def test_cuda_without_a_gpu_is_a_clear_error(class_folder: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for learn in ("autoencoder", "efficientnet-lite0+adapted"):
        line = one_error_line(run_cli("train", class_folder, "-o", tmp_path / "m", "-e", learn, "--device", "cuda"))
        assert "no CUDA GPU is available" in line
        assert not (tmp_path / "m").exists()


def test_error_lines_keep_square_brackets(tmp_path: Path) -> None:
    """Messages are printed verbatim, never read as rich markup (a folder named like a tag stays whole)."""
    missing = tmp_path / "photos[bold]" / "x"
    line = one_error_line(run_cli("train", missing, "-o", tmp_path / "m"))
    assert "photos[bold]" in line
