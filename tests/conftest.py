"""Shared fixtures: tiny generated image folders and a quickly trained model (offline, seconds)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tests never touch the user's dataset cache, and never reach the network.
os.environ["LOOKALIKE_CACHE"] = tempfile.mkdtemp(prefix="lookalike-test-cache-")


def make_class_images(root: Path, per_class: int = 12, size: int = 24, seed: int = 0) -> dict[str, list[Path]]:
    """Two visually distinct classes: warm blobs on dark ('warm') and cool stripes on light ('cool').

    Written as a mix of PNG and JPEG in class sub-folders; returns the paths per class.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {"warm": [], "cool": []}
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(per_class):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        r = rng.uniform(size * 0.15, size * 0.3)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        warm = np.zeros((size, size, 3), np.float64) + rng.uniform(0, 40)
        warm[blob] = [rng.uniform(200, 255), rng.uniform(60, 140), rng.uniform(0, 40)]
        period = rng.uniform(3, 6)
        stripes = (np.sin(xx / period + rng.uniform(0, 6)) > 0)[..., None]
        cool = np.where(stripes, [30, 90, rng.uniform(180, 255)], [220, 230, 240]).astype(np.float64)
        for name, arr in (("warm", warm), ("cool", cool)):
            arr = np.clip(arr + rng.normal(0, 8, arr.shape), 0, 255).astype(np.uint8)
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / (f"{name}_{i:02d}.png" if i % 2 else f"{name}_{i:02d}.jpg")
            Image.fromarray(arr).save(path, quality=95)
            out[name].append(path)
    return out


@pytest.fixture(scope="session")
def class_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two classes of 12 small images each."""
    root = tmp_path_factory.mktemp("images")
    make_class_images(root)
    return root


@pytest.fixture(scope="session")
def trained_model_dir(class_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model trained briefly (16 px, 3 epochs) on ``class_folder``."""
    from lookalike.training import train

    out = tmp_path_factory.mktemp("model") / "model"
    train(class_folder, out, epochs=3, image_size=16, batch_size=8, seed=0)
    return out


@pytest.fixture(scope="session")
def built_index_dir(class_folder: Path, trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of ``class_folder`` built with ``trained_model_dir``."""
    from lookalike.search import Index

    out = tmp_path_factory.mktemp("index") / "index"
    Index.build(class_folder, trained_model_dir, out, num_workers=0)
    return out


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes, to assert that nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(*args: str | Path):
    """Invoke the ``lookalike`` command line in-process (typer's CliRunner)."""
    from typer.testing import CliRunner

    from lookalike.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    """The single ``error: ...`` line of a failed command, checking it failed with exit code 1."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]
