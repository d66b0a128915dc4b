"""Tests for lookalike.models.vgg: torchvision's VGG16 layout up to fc1, and filtering its state dict.

The layout is checked on the meta device (no memory); one real network (random weights, ~1 s to build)
runs forward passes at 32 px. The weights files and the download are tested in test_download.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from lookalike.errors import LookalikeError
from lookalike.models import vgg
from lookalike.models.vgg import VGG16Fc1, vgg16_fc1_state_dict

# Configuration "D" of Simonyan & Zisserman (arXiv:1409.1556), as torchvision's cfgs["D"].
PAPER_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# torchvision's vgg16().features: conv at these indices (each followed by its ReLU), pools between.
CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
POOL_INDICES = [4, 9, 16, 23, 30]
CONV_SHAPES = [
    (64, 3, 3, 3),
    (64, 64, 3, 3),
    (128, 64, 3, 3),
    (128, 128, 3, 3),
    (256, 128, 3, 3),
    (256, 256, 3, 3),
    (256, 256, 3, 3),
    (512, 256, 3, 3),
    (512, 512, 3, 3),
    (512, 512, 3, 3),
    (512, 512, 3, 3),
    (512, 512, 3, 3),
    (512, 512, 3, 3),
]


def expected_fc1_shapes() -> dict[str, tuple[int, ...]]:
    """The keys and shapes of torchvision's vgg16 state dict up to classifier.0, written out by hand."""
    shapes: dict[str, tuple[int, ...]] = {}
    for index, shape in zip(CONV_INDICES, CONV_SHAPES, strict=True):
        shapes[f"features.{index}.weight"] = shape
        shapes[f"features.{index}.bias"] = (shape[0],)
    shapes["classifier.0.weight"] = (4096, 25088)
    shapes["classifier.0.bias"] = (4096,)
    return shapes


def torchvision_vgg16_state(device: str = "meta") -> dict[str, torch.Tensor]:
    """A full torchvision vgg16 state dict (fc2 and the 1000-class layer included), on ``device``."""
    shapes = expected_fc1_shapes()
    shapes.update(
        {
            "classifier.3.weight": (4096, 4096),
            "classifier.3.bias": (4096,),
            "classifier.6.weight": (1000, 4096),
            "classifier.6.bias": (1000,),
        }
    )
    return {key: torch.empty(shape, device=device) for key, shape in shapes.items()}


@pytest.fixture(scope="module")
def network() -> Iterator[VGG16Fc1]:
    """One real network with torchvision's random initialisation (about 470 MB)."""
    torch.manual_seed(0)
    net = VGG16Fc1().eval()
    yield net
    del net


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


def test_paper_config_gives_the_hand_written_shapes() -> None:
    assert list(vgg.VGG16_CONFIG) == PAPER_CONFIG
    convs = [c for c in PAPER_CONFIG if c != "M"]
    assert len(convs) == 13 and PAPER_CONFIG.count("M") == 5
    assert [s[0] for s in CONV_SHAPES] == convs
    assert [s[1] for s in CONV_SHAPES] == [3, *convs[:-1]]
    assert vgg.vgg16_fc1_shapes() == expected_fc1_shapes()
    assert tuple(expected_fc1_shapes()) == vgg.VGG16_FC1_KEYS


def test_state_dict_keys_and_shapes_match_torchvision() -> None:
    net = VGG16Fc1(device="meta")
    state = net.state_dict()
    assert list(state) == list(expected_fc1_shapes())  # same names, same order
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_fc1_shapes()
    assert all(v.device.type == "meta" for v in state.values())
    assert sum(v.numel() for v in state.values()) == 117_479_232  # 138,357,544 less fc2 and fc3


def test_module_indices_match_torchvision() -> None:
    net = VGG16Fc1(device="meta")
    assert len(net.features) == 31
    for index, module in enumerate(net.features):
        if index in CONV_INDICES:
            assert isinstance(module, nn.Conv2d)
            assert module.kernel_size == (3, 3) and module.padding == (1, 1) and module.stride == (1, 1)
        elif index in POOL_INDICES:
            assert isinstance(module, nn.MaxPool2d)
            assert module.kernel_size == 2 and module.stride == 2
        else:
            assert isinstance(module, nn.ReLU), index
            assert isinstance(net.features[index - 1], nn.Conv2d)
    assert isinstance(net.avgpool, nn.AdaptiveAvgPool2d) and net.avgpool.output_size == (7, 7)
    assert len(net.classifier) == 2
    assert isinstance(net.classifier[0], nn.Linear) and isinstance(net.classifier[1], nn.ReLU)
    assert net.embedding_dim == VGG16Fc1.embedding_dim == vgg.VGG16_EMBEDDING_DIM == 4096


def test_no_torchvision_import() -> None:
    source = Path(vgg.__file__).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from)\s+torchvision", source, re.MULTILINE)


# --------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------


def test_forward_gives_nonnegative_fc1_features(network: VGG16Fc1) -> None:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = network(x)
        encoded = network.encode(x)
    assert out.shape == (3, 4096) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out >= 0).all()  # fc1's ReLU
    assert (out > 0).any() and (out == 0).any()
    torch.testing.assert_close(out, encoded)
    assert not torch.allclose(out[0], out[1])


def test_any_size_from_32_px(network: VGG16Fc1) -> None:
    with torch.inference_mode():
        assert network(torch.rand(1, 3, 40, 72)).shape == (1, 4096)
        with pytest.raises(ValueError, match="at least 32×32"):
            network(torch.rand(1, 3, 31, 64))
        with pytest.raises(ValueError, match=r"got shape \(1, 1, 32, 32\)"):
            network(torch.rand(1, 1, 32, 32))


def test_init_follows_torchvision(network: VGG16Fc1) -> None:
    conv = network.features[0]
    fc1 = network.classifier[0]
    assert torch.count_nonzero(conv.bias) == 0 and torch.count_nonzero(fc1.bias) == 0
    assert abs(fc1.weight.std().item() - 0.01) < 1e-3  # N(0, 0.01)
    fan_out = 64 * 3 * 3
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.02  # Kaiming normal, fan_out, relu


def test_from_state_dict_loads_torchvision_layout(network: VGG16Fc1) -> None:
    full = dict(network.state_dict())
    full["classifier.3.weight"] = torch.zeros(4096, 4096)
    full["classifier.3.bias"] = torch.zeros(4096)
    full["classifier.6.weight"] = torch.zeros(1000, 4096)
    full["classifier.6.bias"] = torch.zeros(1000)
    loaded = VGG16Fc1.from_state_dict(full)
    assert not loaded.training
    assert loaded.classifier[0].weight.data_ptr() == network.classifier[0].weight.data_ptr()  # assigned, no copy
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), network(x))


# --------------------------------------------------------------------------------------------------
# State-dict filtering
# --------------------------------------------------------------------------------------------------


def test_state_dict_filter_keeps_fc1_and_drops_fc2_fc3() -> None:
    full = torchvision_vgg16_state()
    kept = vgg16_fc1_state_dict(full)
    assert list(kept) == list(expected_fc1_shapes())
    assert all(kept[key] is full[key] for key in kept)
    assert not any(key.startswith(("classifier.3", "classifier.6")) for key in kept)
    VGG16Fc1(device="meta").load_state_dict(kept, strict=True, assign=True)
    assert vgg16_fc1_state_dict(kept) == kept  # idempotent


@pytest.mark.parametrize("key", ["features.0.weight", "features.28.bias", "classifier.0.weight"])
def test_state_dict_filter_names_a_missing_key(key: str) -> None:
    full = torchvision_vgg16_state()
    del full[key]
    with pytest.raises(LookalikeError) as info:
        vgg16_fc1_state_dict(full)
    message = str(info.value)
    assert repr(key) in message and "missing" in message and "\n" not in message


def test_state_dict_filter_names_a_wrong_shape() -> None:
    full = torchvision_vgg16_state()
    full["classifier.0.weight"] = torch.empty(4096, 512, device="meta")  # e.g. a VGG16 for 1×1 maps
    with pytest.raises(LookalikeError) as info:
        vgg16_fc1_state_dict(full)
    message = str(info.value)
    assert "'classifier.0.weight'" in message and "(4096, 512)" in message and "(4096, 25088)" in message
    assert "\n" not in message


def test_state_dict_filter_refuses_non_tensors() -> None:
    full = torchvision_vgg16_state()
    full["features.5.bias"] = [0.0] * 128  # type: ignore[assignment]
    with pytest.raises(LookalikeError, match=r"'features\.5\.bias' is a list, not a tensor"):
        vgg16_fc1_state_dict(full)


def test_state_dict_filter_refuses_another_network() -> None:
    resnet_like = {"conv1.weight": torch.empty(64, 3, 7, 7, device="meta")}
    with pytest.raises(LookalikeError, match=r"not a torchvision VGG16 state dict: 'features\.0\.weight' is missing"):
        vgg16_fc1_state_dict(resnet_like)


# --------------------------------------------------------------------------------------------------
# Published weights: constants only (nothing here can reach download.pytorch.org)
# --------------------------------------------------------------------------------------------------


def test_published_weights_constants() -> None:
    assert vgg.VGG16_WEIGHTS_URL == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert vgg.VGG16_WEIGHTS_URL == vgg.VGG16_WEIGHTS_BASE_URL + vgg.VGG16_WEIGHTS_FILENAME
    prefix = vgg.VGG16_WEIGHTS_SHA256_PREFIX
    assert re.fullmatch(r"[0-9a-f]{8}", prefix)
    # torch.hub's rule: the hash is the part of the file name after the last "-", before the suffix.
    assert vgg.VGG16_WEIGHTS_FILENAME.removesuffix(".pth").rsplit("-", 1)[1] == prefix
    pre = vgg.VGG16_PREPROCESSING
    assert pre.image_size == vgg.VGG16_IMAGE_SIZE == 224 and pre.channels == 3
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert vgg.VGG16_WEIGHTS_URL in vgg.VGG16_WEIGHTS_PROVENANCE
    assert "BSD-3-Clause" in vgg.VGG16_WEIGHTS_PROVENANCE and "ImageNet" in vgg.VGG16_WEIGHTS_PROVENANCE
    assert "\n" not in vgg.VGG16_WEIGHTS_PROVENANCE
