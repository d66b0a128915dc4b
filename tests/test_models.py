"""Tests for lookalike.models: the presets' networks, preset overrides, and model directories."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lookalike.errors import LookalikeError
from lookalike.models import PRESETS, Model, build_network, resolve_preset
from lookalike.models.autoencoders import (
    CifarSeedAE,
    DenseLatentAE,
    FolderSeedAE,
    MnistSeedAE,
    init_weights,
)

# small image sizes where the preset's own would be slow or huge (None: the preset's size)
PRESET_SIZES = {
    "default": None,
    "denoising": None,
    "cifar-seed": None,
    "mnist-seed": None,
    "dense-latent": 16,
    "folder-seed": 64,
}
EMBEDDING_DIMS = {
    "default": 128,
    "denoising": 256,
    "cifar-seed": 1000,
    "mnist-seed": 128,
    "dense-latent": 16,
    "folder-seed": 256 * 2 * 2,
}


def pixels(model: Model, n: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *model.input_shape), dtype=np.uint8)


def test_every_preset_is_covered():
    assert set(PRESET_SIZES) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESET_SIZES))
def test_every_preset_builds_and_runs(name):
    model = Model.from_preset(name, image_size=PRESET_SIZES[name])
    assert model.preset == name and model.architecture == PRESETS[name].architecture
    c, s, _ = model.input_shape
    assert s == (PRESET_SIZES[name] or PRESETS[name].preprocessing.image_size)
    assert c == PRESETS[name].preprocessing.channels
    dim = model.embedding_dim
    assert dim == EMBEDDING_DIMS[name]
    x = torch.randn(2, *model.input_shape)
    with torch.no_grad():
        recon, z = model.network(x)
    assert recon.shape == x.shape
    assert z.shape == (2, dim)
    emb = model.embed_pixels(pixels(model, 2))
    assert emb.shape == (2, dim) and emb.dtype == np.float32
    assert np.all(np.isfinite(emb))
    assert model.reconstruct(pixels(model, 1)).shape == (1, *model.input_shape)


def test_mnist_seed_geometry_and_sigmoid():
    model = Model.from_preset("mnist-seed")
    assert model.input_shape == (1, 28, 28)
    net = model.network
    assert isinstance(net, MnistSeedAE) and net.output_activation == "sigmoid"
    x = torch.randn(4, 1, 28, 28) * 3
    with torch.no_grad():
        code = net.encoder(x)
        recon, z = net(x)
    assert code.shape == (4, 8, 4, 4)
    assert z.shape == (4, 128) and model.embedding_dim == 128
    assert recon.shape == (4, 1, 28, 28)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    convs = [m for m in net.encoder if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [32, 16, 8]
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.encoder) == 3
    # at a size other than 28 the decoder still returns the input size
    other = MnistSeedAE(in_channels=1, image_size=32)
    assert other(torch.zeros(1, 1, 32, 32))[0].shape == (1, 1, 32, 32)


def test_cifar_seed_matches_seed_001_layers():
    model = Model.from_preset("cifar-seed")
    net = model.network
    assert isinstance(net, CifarSeedAE)
    assert model.input_shape == (3, 32, 32)
    convs = [m for m in net.encoder if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6
    assert [m.stride[0] for m in convs] == [1, 1, 2, 1, 2, 1]
    assert [m.out_channels for m in convs] == [16, 16, 32, 32, 64, 64]
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in convs)
    linears = [m for m in net.encoder if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4096, 1000)]
    assert isinstance(list(net.encoder)[-1], nn.ReLU)
    emb = model.embed_pixels(pixels(model, 4))
    assert emb.shape == (4, 1000) and float(emb.min()) >= 0.0 and float(emb.max()) > 0.0
    assert model.train_config.init == "xavier"
    decoder_convs = [m for m in net.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert len(decoder_convs) == 6


def test_folder_seed_at_512_has_a_256x16x16_code():
    with torch.device("meta"):  # shapes only, nothing allocated
        net = FolderSeedAE(in_channels=3, image_size=512)
        x = torch.empty(2, 3, 512, 512)
        assert net.encoder(x).shape == (2, 256, 16, 16)
        assert net.encode(x).shape == (2, 256 * 16 * 16)
        assert net(x)[0].shape == (2, 3, 512, 512)
    assert net.code_shape == (256, 16, 16)
    assert PRESETS["folder-seed"].preprocessing.image_size == 512


def test_folder_seed_at_64_runs():
    net = build_network("folder-seed", in_channels=3, image_size=64)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert net.encoder(x).shape == (2, 256, 2, 2)
        recon, z = net(x)
    assert z.shape == (2, 1024) and recon.shape == x.shape
    assert float(recon.min()) >= 0.0  # the seed's decoder ends with a ReLU
    with pytest.raises(ValueError, match="divisible by 32"):
        FolderSeedAE(image_size=80)


def test_dense_latent_chains_its_three_convs():
    model = Model.from_preset("dense-latent", image_size=16)
    net = model.network
    assert isinstance(net, DenseLatentAE) and net.output_activation == "sigmoid"
    assert model.embedding_dim == 16
    convs = [m for m in net.encoder if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(3, 32), (32, 64), (64, 64)]
    linear = [m for m in net.encoder if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64 * 16 * 16, 16)]
    with torch.no_grad():
        recon = net(torch.randn(2, 3, 16, 16))[0]
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0

    px = pixels(model, 2)
    before = model.embed_pixels(px)
    assert not np.allclose(before[0], before[1])
    with torch.no_grad():
        convs[1].weight.zero_()
        if convs[1].bias is not None:
            convs[1].bias.zero_()
    after = model.embed_pixels(px)
    assert not np.allclose(before, after)  # the embedding depends on the second conv
    np.testing.assert_allclose(after[0], after[1], rtol=1e-5, atol=1e-6)  # ...and all input goes through it


def test_xavier_init_sets_biases_to_001():
    torch.manual_seed(0)
    net = build_network("cifar-seed", in_channels=3, image_size=32)
    default_bias = net.encoder[0].bias.detach().clone()
    assert not torch.all(default_bias == 0.01)
    init_weights(net, "default")
    assert torch.equal(net.encoder[0].bias, default_bias)
    init_weights(net, "xavier")
    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 8  # 6 convs + encoder and decoder linears
    for m in layers:
        assert torch.all(m.bias == 0.01)
        fan_out, fan_in = m.weight.shape[0], m.weight.shape[1]
        receptive = m.weight[0, 0].numel()
        bound = math.sqrt(6.0 / ((fan_in + fan_out) * receptive))
        w = m.weight.detach()
        assert float(w.abs().max()) <= bound + 1e-6
        assert float(w.abs().max()) > bound * 0.5
    with pytest.raises(ValueError, match="init"):
        init_weights(net, "kaiming")
    # the cifar-seed preset trains from this init
    model = Model.from_preset("cifar-seed")
    assert all(torch.all(m.bias == 0.01) for m in model.network.modules() if isinstance(m, nn.Conv2d | nn.Linear))


def test_resolve_preset_overrides():
    arch, kwargs, prep, train = resolve_preset("denoising", image_size=48, latent_dim=64, epochs=3, lr=None)
    assert arch == "residual" and kwargs["latent_dim"] == 64 and prep.image_size == 48
    assert train.epochs == 3 and train.lr == PRESETS["denoising"].train.lr  # None leaves a field alone
    assert PRESETS["denoising"].arch_kwargs["latent_dim"] == 256  # the preset itself is not changed

    # The default's embedding is its last stage's width; --latent-dim sets it.
    arch, kwargs, _, train = resolve_preset(
        "default", latent_dim=96, arch_overrides={"widths": [16, 32, 64]}, augmentation={"jitter": 0.0}
    )
    assert arch == "invariant" and kwargs["widths"] == [16, 32, 64] and kwargs["embedding_dim"] == 96
    assert train.augmentation == {"view_scale": 0.5, "jitter": 0.0}  # merged into the preset's, not replacing it
    assert PRESETS["default"].train.augmentation == {"view_scale": 0.5}

    _, _, grey, _ = resolve_preset("cifar-seed", channels=1)
    assert grey.channels == 1 and len(grey.mean) == 1 and len(grey.std) == 1
    assert Model.from_preset("cifar-seed", channels=1).input_shape == (1, 32, 32)

    for name, bad, multiple in [
        ("folder-seed", 100, 32),
        ("default", 30, 4),
        ("denoising", 28, 8),
        ("cifar-seed", 30, 4),
    ]:
        with pytest.raises(ValueError, match=f"multiple of {multiple}"):
            resolve_preset(name, image_size=bad)
        with pytest.raises(LookalikeError, match=f"multiple of {multiple}"):
            Model.from_preset(name, image_size=bad)
    for name in ("mnist-seed", "folder-seed"):
        with pytest.raises(ValueError, match="no latent size"):
            resolve_preset(name, latent_dim=32)
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_preset("resnet50")
    assert Model.from_preset("default", image_size=16, latent_dim=24).embedding_dim == 24


def test_build_network_rejects_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network("vgg", in_channels=3, image_size=32)


# ----------------------------------------------------------------------------------------- model dirs
def test_save_load_round_trip(tmp_path):
    model = Model.from_preset("default", image_size=16, latent_dim=32)
    with torch.no_grad():  # make BatchNorm statistics non-trivial so that they must be saved too
        for m in model.network.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.info["epochs"] = 2
    px = pixels(model, 5)
    want = model.embed_pixels(px)
    directory = model.save(tmp_path / "model")
    loaded = Model.load(directory)
    assert np.array_equal(loaded.embed_pixels(px), want)
    assert loaded.fingerprint == model.fingerprint
    assert len(loaded.fingerprint) == 64
    assert loaded.preprocessing == model.preprocessing
    assert loaded.config() == model.config()
    assert loaded.info == {"epochs": 2}
    config = json.loads((directory / "config.json").read_text())
    assert config["weights_sha256"] == model.fingerprint
    assert config["embedding_dim"] == 32


def test_load_a_seed_preset_round_trip(tmp_path):
    model = Model.from_preset("mnist-seed")
    px = pixels(model, 2)
    loaded = Model.load(model.save(tmp_path / "m"))
    assert loaded.preset == "mnist-seed" and loaded.architecture == "mnist-seed"
    assert np.array_equal(loaded.embed_pixels(px), model.embed_pixels(px))
    assert np.array_equal(loaded.reconstruct(px), model.reconstruct(px))


def test_fingerprint_changes_with_the_weights():
    a = Model.from_preset("default", image_size=16)
    b = Model.from_preset("default", image_size=16)
    assert a.fingerprint == b.fingerprint  # same seed, same weights
    with torch.no_grad():
        next(b.network.parameters()).add_(1.0)
    b.mark_changed()
    assert a.fingerprint != b.fingerprint


def test_load_newer_format_version_is_refused(tmp_path):
    directory = Model.from_preset("default", image_size=16).save(tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    config["format_version"] = 99
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(LookalikeError, match="99") as exc:
        Model.load(directory)
    assert "config.json" in str(exc.value)


def test_load_weights_that_do_not_match_the_config(tmp_path):
    first = Model.from_preset("default", image_size=16).save(tmp_path / "first")
    other = Model.from_preset("default", image_size=16, seed=1).save(tmp_path / "other")
    (first / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(LookalikeError, match="sha256") as exc:
        Model.load(first)
    assert "model.safetensors" in str(exc.value)


def test_load_bad_directories(tmp_path):
    with pytest.raises(LookalikeError, match="does not exist") as exc:
        Model.load(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(exc.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LookalikeError, match="config.json"):
        Model.load(tmp_path / "empty")
    directory = Model.from_preset("default", image_size=16).save(tmp_path / "m")
    (directory / "model.safetensors").unlink()
    with pytest.raises(LookalikeError, match="missing model weights"):
        Model.load(directory)


def test_saving_over_a_model_replaces_it_and_leaves_no_temp_files(tmp_path):
    directory = tmp_path / "model"
    first = Model.from_preset("default", image_size=16)
    second = Model.from_preset("default", image_size=16, latent_dim=48, seed=3)
    first.save(directory)
    second.save(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded = Model.load(directory)
    assert loaded.embedding_dim == 48 and loaded.fingerprint == second.fingerprint
    px = pixels(second, 2)
    assert np.array_equal(loaded.embed_pixels(px), second.embed_pixels(px))


def test_embedding_dim_probe_follows_the_weights_dtype() -> None:
    import copy

    import torch

    from lookalike.models.autoencoders import ResidualAE

    net = ResidualAE(image_size=16)
    half = copy.deepcopy(net).to(torch.bfloat16)  # probe not cached yet on either copy
    assert half.embedding_dim == net.embedding_dim == 256
