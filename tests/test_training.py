"""Training: outputs, checkpoints and resume, presets, determinism, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lookalike import LookalikeError
from lookalike.models import PRESETS, Model
from lookalike.search import Index
from lookalike.serialization import CHECKPOINT_NAME, load_checkpoint
from lookalike.training import auto_image_size, split_indices, train

from .conftest import make_class_images, tree_snapshot


def test_train_writes_model_dir_checkpoint_and_pictures(trained_model_dir: Path) -> None:
    files = {p.name for p in trained_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "checkpoint.pt", "loss.png"} <= files
    grids = sorted((trained_model_dir / "reconstructions").glob("epoch_*.png"))
    assert [g.name for g in grids] == ["epoch_001.png", "epoch_002.png", "epoch_003.png"]
    assert Image.open(grids[-1]).size[0] > 100
    config = json.loads((trained_model_dir / "config.json").read_text())
    assert config["format"] == "lookalike-model" and config["lookalike_version"]
    assert config["architecture"]["name"] == "invariant"
    assert config["preprocessing"]["image_size"] == 16
    history = config["info"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(h["val_loss"] is not None and h["images_per_s"] > 0 for h in history)
    ckpt = load_checkpoint(trained_model_dir / CHECKPOINT_NAME)  # weights_only=True inside
    assert ckpt["epoch"] == 3 and "state" in ckpt["optimizer"]


def test_loss_goes_down(trained_model_dir: Path) -> None:
    history = json.loads((trained_model_dir / "config.json").read_text())["info"]["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def _weights(model: Model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.network.state_dict().items()}


class _StopAfter:
    """Simulates Ctrl-C once an epoch's outputs are written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, stats) -> None:
        if stats.epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_continues_exactly_where_it_stopped(class_folder: Path, tmp_path: Path) -> None:
    straight = train(class_folder, tmp_path / "a", epochs=3, image_size=16, batch_size=8, seed=3)
    with pytest.raises(KeyboardInterrupt):
        train(class_folder, tmp_path / "b", epochs=3, image_size=16, batch_size=8, seed=3, callbacks=[_StopAfter(2)])
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["epoch"] == 2
    resumed = train(class_folder, tmp_path / "b", resume=True)
    assert resumed.info["epochs_done"] == 3 and len(resumed.info["history"]) == 3
    for name, tensor in _weights(straight).items():
        torch.testing.assert_close(tensor, resumed.network.state_dict()[name], msg=name)
    with pytest.raises(LookalikeError, match="already trained 3 epochs"):
        train(class_folder, tmp_path / "b", epochs=3, resume=True)


def test_same_seed_same_model(class_folder: Path) -> None:
    a = train(class_folder, epochs=1, image_size=16, batch_size=8, seed=1)
    b = train(class_folder, epochs=1, image_size=16, batch_size=8, seed=1)
    assert a.fingerprint == b.fingerprint


def test_refuses_to_overwrite_a_saved_model(class_folder: Path, trained_model_dir: Path) -> None:
    before = tree_snapshot(trained_model_dir)
    with pytest.raises(LookalikeError, match="already holds a model"):
        train(class_folder, trained_model_dir, epochs=1)
    assert tree_snapshot(trained_model_dir) == before


@pytest.mark.parametrize("kind", ["missing", "empty", "no-images", "all-unreadable"])
def test_bad_folders_fail_clearly_and_leave_the_model_alone(kind: str, tmp_path: Path, trained_model_dir: Path) -> None:
    folder = tmp_path / "in"
    if kind != "missing":
        folder.mkdir()
    if kind == "no-images":
        (folder / "notes.txt").write_text("hello")
    if kind == "all-unreadable":
        (folder / "a.jpg").write_text("not really a jpeg")
        (folder / "b.png").write_bytes(b"")
    before = tree_snapshot(trained_model_dir)
    expected = {
        "missing": "does not exist",
        "empty": "empty",
        "no-images": "no images",
        "all-unreadable": "could be read",
    }
    with pytest.raises(LookalikeError, match=expected[kind]) as info:
        train(folder, trained_model_dir, epochs=1, overwrite=True)
    assert str(folder.name) in str(info.value)
    assert tree_snapshot(trained_model_dir) == before


def test_unreadable_files_are_skipped_and_reported(tmp_path: Path) -> None:
    make_class_images(tmp_path, per_class=4, size=16)
    (tmp_path / "warm" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    skipped: list[tuple[Path, str]] = []

    class Spy:
        def on_skip(self, path: Path, reason: str) -> None:
            skipped.append((path, reason))

    model = train(tmp_path, epochs=1, image_size=16, callbacks=[Spy()])
    assert [p.name for p, _ in skipped] == ["broken.jpg"]
    assert model.info["images"] == 8 and model.info["skipped"] == 1


@pytest.mark.parametrize(
    ("preset", "size"), [("cifar-seed", 16), ("mnist-seed", 16), ("dense-latent", 8), ("folder-seed", 32)]
)
def test_every_seed_preset_trains_and_reloads(preset: str, size: int, class_folder: Path, tmp_path: Path) -> None:
    model = train(class_folder, tmp_path / preset, preset=preset, epochs=1, image_size=size, batch_size=8)
    loaded = Model.load(tmp_path / preset)
    assert loaded.preset == preset and loaded.fingerprint == model.fingerprint
    assert loaded.preprocessing == model.preprocessing
    images = sorted(class_folder.rglob("*.png"))[:3]
    np.testing.assert_allclose(loaded.embed(images), model.embed(images), rtol=1e-5, atol=1e-5)


def test_mnist_seed_trains_greyscale_with_bce(class_folder: Path) -> None:
    model = train(class_folder, preset="mnist-seed", epochs=1, image_size=16)
    assert model.preprocessing.channels == 1 and model.train_config.loss == "bce"
    recon = model.reconstruct(np.zeros((2, 1, 16, 16), np.uint8))
    assert recon.shape == (2, 1, 16, 16) and recon.dtype == np.uint8


def test_auto_image_size(tmp_path: Path) -> None:
    small = make_class_images(tmp_path / "small", per_class=2, size=24)
    assert auto_image_size([p for ps in small.values() for p in ps]) == 32
    big = make_class_images(tmp_path / "big", per_class=2, size=120)
    assert auto_image_size([p for ps in big.values() for p in ps]) == 64


def test_split_is_seeded_and_disjoint() -> None:
    tr, va = split_indices(100, 0.1, seed=0)
    assert len(va) == 10 and len(tr) == 90 and not set(tr) & set(va)
    assert np.array_equal(split_indices(100, 0.1, seed=0)[1], va)
    assert len(split_indices(5, 0.01, seed=0)[1]) == 1  # at least one image held out
    assert len(split_indices(1, 0.5, seed=0)[1]) == 0


def test_trained_model_finds_same_class_far_above_chance(tmp_path: Path) -> None:
    """End to end on two visually distinct classes: precision@5 of leave-one-out queries >> 0.5 (chance)."""
    make_class_images(tmp_path / "img", per_class=20, size=32, seed=7)
    model = train(tmp_path / "img", epochs=4, batch_size=16, seed=0)
    index = Index.build(tmp_path / "img", model, num_workers=0)
    results = index.search_batch(list(index.entries), k=5, exclude_self=True)
    precision = np.mean([[h.label == index.entries[q].label for h in hits] for q, hits in zip(index.entries, results)])
    assert precision > 0.85, precision
    assert len(PRESETS) == 6


def test_lookalike_train_stays_the_function_after_the_training_module_is_imported() -> None:
    import lookalike
    import lookalike.cli  # noqa: F401  (imports lookalike.training, as the command line does)
    import lookalike.training

    assert lookalike.train is lookalike.training.train
    assert callable(lookalike.train)


def test_amp_setting_is_checked_and_follows_the_cpu() -> None:
    from lookalike.models.model import cpu_supports_bf16
    from lookalike.training import use_amp

    cpu = torch.device("cpu")
    assert use_amp("off", cpu) is False
    assert use_amp("auto", cpu) == use_amp("bf16", cpu) == cpu_supports_bf16()
    with pytest.raises(LookalikeError, match="unknown amp setting"):
        use_amp("fp8", cpu)


def test_the_default_learns_views_of_one_image_alike(tmp_path: Path) -> None:
    """The invariance objective: after a little training on two classes, the embeddings of two random
    views of the same image are closer than those of different images, and the model still reconstructs."""
    from lookalike.augment import Augmentation, random_view

    make_class_images(tmp_path / "imgs", per_class=32, size=32, seed=4)
    model = train(tmp_path / "imgs", tmp_path / "m", epochs=4, batch_size=32, seed=0, val_fraction=0)
    assert model.architecture == "invariant" and model.train_config.objective == "simclr"
    history = model.info["history"]
    assert len(history) == 4 and all(np.isfinite(h["train_loss"]) for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (tmp_path / "m" / "reconstructions" / "epoch_004.png").exists()

    pixels = np.stack(
        [np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in sorted((tmp_path / "imgs").rglob("*.*"))]
    )
    x = torch.from_numpy(pixels).float() / 255

    def same_and_other(m: Model) -> tuple[float, float]:
        """Mean cosine of two views of one image, and of views of different images."""
        gen = torch.Generator().manual_seed(0)
        prep = m.preprocessing
        mean, std = torch.tensor(prep.mean).view(1, -1, 1, 1), torch.tensor(prep.std).view(1, -1, 1, 1)
        with torch.inference_mode():
            net = m.network.eval()
            a, b = (F.normalize(net.encode((random_view(x, Augmentation(), gen) - mean) / std), dim=1) for _ in "ab")
        return float((a * b).sum(1).mean()), float((a @ b.T).fill_diagonal_(float("nan")).nanmean())

    same, other = same_and_other(model)
    same0, other0 = same_and_other(Model.from_preset("default"))  # untrained: crops overlap, so some gap already
    assert same - other > (same0 - other0) + 0.1


def test_an_objective_needs_a_network_with_a_projector() -> None:
    from lookalike.training import Trainer, TrainingData

    data = TrainingData(np.zeros((4, 3, 16, 16), np.uint8), ["a", "b", "c", "d"], [])
    model = Model.from_preset("denoising", image_size=16, objective="simclr")
    with pytest.raises(LookalikeError, match="no projector"):
        Trainer(model, None).fit(data)
    with pytest.raises(LookalikeError, match="unknown objective"):
        Trainer(Model.from_preset("default", image_size=16, objective="byol"), None).fit(data)
