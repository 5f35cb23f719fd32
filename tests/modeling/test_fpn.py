"""FPN and BackboneWithFPN: parity with torchvision's v1 and v2 backbones, key mapping."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from maskrcnn.config import BackboneConfig, FPNConfig
from maskrcnn.modeling.backbone import ResNet
from maskrcnn.modeling.fpn import FPN, BackboneWithFPN
from maskrcnn.modeling.randomize import randomize_
from maskrcnn.weights.torchvision_keys import torchvision_fpn_key

# Identical kernels give identical results; plain BN (eval) against our FrozenBN computes the
# same affine map by a different formula, which costs ~1e-6 relative after ~60 layers.
REL_TOL = 1e-5
TV_NAMES = {"0": "p2", "1": "p3", "2": "p4", "3": "p5", "pool": "p6"}


def convert(tv_backbone: nn.Module) -> dict[str, Tensor]:
    """torchvision ``BackboneWithFPN`` state dict -> ours (for a BackboneWithFPN)."""
    out = {}
    for key, value in tv_backbone.state_dict().items():
        new_key = torchvision_fpn_key("backbone." + key)
        assert new_key is not None and new_key.startswith("backbone.")
        out[new_key.removeprefix("backbone.")] = value
    return out


def inputs() -> list[Tensor]:
    """A 200x264 image zero-padded to 224x288, and a 100x130 one (not a multiple of 32)."""
    g = torch.Generator().manual_seed(1)
    padded = F.pad(torch.randn(1, 3, 200, 264, generator=g), (0, 24, 0, 24))
    return [padded, torch.randn(1, 3, 100, 130, generator=g)]


def check_parity(tv_backbone: nn.Module, ours: BackboneWithFPN) -> None:
    ours.load_state_dict(convert(tv_backbone), strict=True)
    tv_backbone.eval()
    ours.eval()
    for x in inputs():
        with torch.no_grad():
            ref = tv_backbone(x)
            out = ours(x)
        assert list(out) == [TV_NAMES[k] for k in ref]
        for k, r in ref.items():
            o = out[TV_NAMES[k]]
            assert o.shape == r.shape
            assert ((o - r).abs().max() / r.abs().max()).item() <= REL_TOL, (x.shape, k)
    sizes = [tuple(v.shape[-2:]) for v in out.values()]
    assert sizes == [(25, 33), (13, 17), (7, 9), (4, 5), (2, 3)]


@pytest.fixture(scope="module")
def tv_v1() -> nn.Module:
    """torchvision's v1 backbone as built without weights: plain BatchNorm2d, no FPN norm."""
    backbone = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone
    assert isinstance(backbone.body.bn1, nn.BatchNorm2d)
    randomize_(backbone, seed=0)
    return backbone


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_parity_v1(tv_v1: nn.Module, norm: str) -> None:
    ours = BackboneWithFPN.from_config(BackboneConfig(norm=norm), FPNConfig())
    check_parity(tv_v1, ours)


def test_parity_v1_frozen_bn() -> None:
    # The layout that pretrained v1 weights load into: FrozenBatchNorm2d, layer1+stem frozen.
    tv = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
    randomize_(tv, seed=5)
    ours = BackboneWithFPN.from_config(BackboneConfig(norm="frozen_bn", freeze_at=2), FPNConfig())
    check_parity(tv, ours)
    tv_trainable = {n for n, p in tv.named_parameters() if p.requires_grad}
    ours_trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert {
        torchvision_fpn_key("backbone." + n).removeprefix("backbone.") for n in tv_trainable
    } == ours_trainable


def test_parity_v2() -> None:
    tv = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None).backbone
    randomize_(tv, seed=2)
    ours = BackboneWithFPN.from_config(BackboneConfig(norm="bn"), FPNConfig(norm="bn"))
    assert ours.fpn.lateral_convs[0].conv.bias is None
    check_parity(tv, ours)


def test_attributes_and_names() -> None:
    ours = BackboneWithFPN.from_config(BackboneConfig(depth=18), FPNConfig(out_channels=64))
    assert ours.out_channels == 64
    assert ours.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert ours.fpn.in_features == ("res2", "res3", "res4", "res5")
    names = set(ours.state_dict())
    assert "fpn.lateral_convs.0.conv.weight" in names  # 1x1 on res2
    assert "fpn.output_convs.3.conv.bias" in names
    assert ours.fpn.lateral_convs[3].conv.in_channels == 512
    assert ours.fpn.output_convs[0].conv.kernel_size == (3, 3)
    out = ours(torch.randn(2, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (2, 64, 16, 24),
        "p3": (2, 64, 8, 12),
        "p4": (2, 64, 4, 6),
        "p5": (2, 64, 2, 3),
        "p6": (2, 64, 1, 2),
    }


def test_top_down_is_nearest_to_lateral_size() -> None:
    # 1x1 identity laterals and outputs on one channel expose the top-down arithmetic.
    fpn = FPN(in_channels={"res4": 1, "res5": 1}, out_channels=1)
    with torch.no_grad():
        for conv in [*fpn.lateral_convs, *fpn.output_convs]:
            conv.conv.weight.zero_()
            conv.conv.weight[..., conv.conv.kernel_size[0] // 2, conv.conv.kernel_size[1] // 2] = 1
    c4 = torch.zeros(1, 1, 3, 5)
    c5 = torch.arange(6.0).reshape(1, 1, 2, 3)
    out = fpn({"res5": c5, "res4": c4})
    assert list(out) == ["p4", "p5", "p6"]
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1, 1, 2])  # floor(i * in / out)
    assert torch.equal(out["p4"][0, 0], c5[0, 0][rows][:, cols])
    assert torch.equal(out["p6"], c5[..., ::2, ::2])


def test_fpn_init() -> None:
    torch.manual_seed(0)
    fpn = FPN(in_channels={"res2": 256, "res3": 512, "res4": 1024, "res5": 2048})
    w = fpn.output_convs[1].conv.weight  # kaiming_uniform(a=1): bound sqrt(3 / fan_in)
    bound = math.sqrt(3 / (256 * 9))
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.95 * bound
    assert all(torch.equal(m.conv.bias, torch.zeros(256)) for m in fpn.lateral_convs)


def test_group_norm_fpn() -> None:
    fpn = FPN(in_channels={"res3": 32, "res4": 64}, out_channels=64, norm="gn")
    assert isinstance(fpn.output_convs[0].norm, nn.GroupNorm)
    out = fpn({"res3": torch.randn(2, 32, 9, 9), "res4": torch.randn(2, 64, 5, 5)})
    assert [tuple(v.shape) for v in out.values()] == [(2, 64, 9, 9), (2, 64, 5, 5), (2, 64, 3, 3)]


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="consecutive"):
        FPN(in_channels={"res2": 8, "res4": 8})
    with pytest.raises(ValueError, match="res<k>"):
        FPN(in_channels={"c2": 8})
    bottom_up = ResNet(BackboneConfig(depth=18), out_features=("res4",))
    fpn = FPN(in_channels={"res4": 256, "res5": 512})
    with pytest.raises(ValueError, match="res5"):
        BackboneWithFPN(bottom_up, fpn)


def test_legacy_names_load_like_current(tv_v1: nn.Module) -> None:
    current = {"backbone." + k: v for k, v in tv_v1.state_dict().items()}
    legacy = {re.sub(r"(_blocks\.\d+)\.0\.", r"\1.", k): v for k, v in current.items()}
    assert "backbone.fpn.inner_blocks.0.weight" in legacy
    assert {torchvision_fpn_key(k): v for k, v in legacy.items()} == {
        torchvision_fpn_key(k): v for k, v in current.items()
    }
