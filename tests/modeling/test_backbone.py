"""ResNet / ResNeXt bottom-up network: parity with torchvision, layout, freezing, loading."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.models._utils import IntermediateLayerGetter

from maskrcnn.config import BackboneConfig
from maskrcnn.modeling.backbone import ResNet, make_stage
from maskrcnn.modeling.layers import FrozenBatchNorm2d
from maskrcnn.modeling.randomize import randomize_
from maskrcnn.weights.torchvision_keys import load_torchvision_resnet, torchvision_resnet_key

# Both sides run the same fp32 kernels in the same order, so outputs agree bit for bit here;
# the bound allows for reordered accumulation (~1e-6 relative after 50 layers), not more.
REL_TOL = 1e-5

TV_CONFIGS = {
    "resnet18": BackboneConfig(depth=18),
    "resnet34": BackboneConfig(depth=34),
    "resnet50": BackboneConfig(depth=50),
    "resnet101": BackboneConfig(depth=101),
    "resnet152": BackboneConfig(depth=152),
    "resnext50_32x4d": BackboneConfig(depth=50, groups=32, width_per_group=4),
    "resnext101_32x8d": BackboneConfig(depth=101, groups=32, width_per_group=8),
    "wide_resnet50_2": BackboneConfig(depth=50, width_per_group=128),
}


def rel_max_diff(out: Tensor, ref: Tensor) -> float:
    """max |out - ref| / max |ref|."""
    assert out.shape == ref.shape
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_parity_with_torchvision(name: str) -> None:
    tv = getattr(tv_resnet, name)(norm_layer=torchvision.ops.FrozenBatchNorm2d).eval()
    randomize_(tv, seed=0)
    ours = ResNet(TV_CONFIGS[name]).eval()
    load_torchvision_resnet(ours, tv.state_dict())
    # Odd sizes: every stride-2 step rounds up the same way on both sides.
    x = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(1))
    getter = IntermediateLayerGetter(tv, {f"layer{t}": f"res{t + 1}" for t in range(1, 5)})
    with torch.no_grad():
        ref = getter(x)
        out = ours(x)
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for key in out:
        assert rel_max_diff(out[key], ref[key]) <= REL_TOL, key
    assert [tuple(out[k].shape[-2:]) for k in out] == [(25, 33), (13, 17), (7, 9), (4, 5)]


@pytest.mark.parametrize("name", sorted(TV_CONFIGS))
def test_state_dict_layout_matches_torchvision(name: str) -> None:
    with torch.device("meta"):
        tv = getattr(tv_resnet, name)(norm_layer=torchvision.ops.FrozenBatchNorm2d)
        ours = ResNet(TV_CONFIGS[name])
    mapped = {}
    for key, value in tv.state_dict().items():
        new_key = torchvision_resnet_key(key)
        if new_key is not None:
            mapped[new_key] = tuple(value.shape)
    assert mapped == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_resnext101_32x8d_builds_with_torchvision_param_count() -> None:
    # Plain BN on both sides, so the norms' affine parameters are counted too.
    cfg = dataclasses.replace(TV_CONFIGS["resnext101_32x8d"], norm="bn")
    ours = ResNet(cfg, out_features=("res5",))
    with torch.device("meta"):
        tv = tv_resnet.resnext101_32x8d()
    tv_count = sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in ours.parameters()) == tv_count
    assert ours.res3[0].conv2.conv.groups == 32
    assert ours.res3[0].conv2.conv.in_channels == 512  # int(128 * 8 / 64) * 32
    with torch.no_grad():
        out = ours.eval()(torch.randn(1, 3, 32, 32))
    assert out["res5"].shape == (1, 2048, 1, 1)


def test_truncated_network_and_attributes() -> None:
    net = ResNet(BackboneConfig(depth=18), out_features=("res4", "stem", "res2"))
    assert not hasattr(net, "res5")
    assert net.out_features == ("stem", "res2", "res4")
    assert net.out_channels == {"stem": 64, "res2": 64, "res4": 256}
    assert net.strides == {"stem": 4, "res2": 4, "res4": 16}
    out = net(torch.randn(1, 3, 64, 80))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "stem": (1, 64, 16, 20),
        "res2": (1, 64, 16, 20),
        "res4": (1, 256, 4, 5),
    }
    full = ResNet(BackboneConfig(depth=50))
    assert full.out_channels == {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
    assert full.strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


@pytest.mark.parametrize("freeze_at", range(6))
def test_freeze_at(freeze_at: int) -> None:
    net = ResNet(BackboneConfig(depth=18, norm="gn", freeze_at=freeze_at))
    frozen = ("stem", "res2", "res3", "res4", "res5")[:freeze_at]
    for name, p in net.named_parameters():
        assert p.requires_grad == (name.split(".")[0] not in frozen), name
    assert any(n.startswith("stem.conv1.norm.") for n, _ in net.named_parameters())


def test_freeze_beyond_built_stages() -> None:
    net = ResNet(BackboneConfig(depth=18, norm="bn", freeze_at=5), out_features=("res3",))
    assert not any(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("stride_in_1x1", [False, True])
def test_stride_placement(stride_in_1x1: bool) -> None:
    net = ResNet(BackboneConfig(depth=50, stride_in_1x1=stride_in_1x1))
    for stage in ("res3", "res4", "res5"):
        first = getattr(net, stage)[0]
        assert first.conv1.conv.stride == ((2, 2) if stride_in_1x1 else (1, 1))
        assert first.conv2.conv.stride == ((1, 1) if stride_in_1x1 else (2, 2))
        assert first.conv3.conv.stride == (1, 1)
        assert first.shortcut.conv.stride == (2, 2)
        for block in list(getattr(net, stage))[1:]:
            assert block.shortcut is None
            assert all(c.conv.stride == (1, 1) for c in (block.conv1, block.conv2, block.conv3))
    assert all(b.conv1.conv.stride == b.conv2.conv.stride == (1, 1) for b in net.res2)
    # Output sizes do not depend on where the stride is.
    out = net(torch.randn(1, 3, 70, 90))
    assert tuple(out["res5"].shape) == (1, 2048, 3, 3)


def test_group_norm_builds_runs_and_trains() -> None:
    net = ResNet(BackboneConfig(depth=50, norm="gn", freeze_at=0), out_features=("res3",))
    assert isinstance(net.res2[0].conv1.norm, nn.GroupNorm)
    assert net.res2[0].conv1.norm.num_groups == 32
    assert net.res2[0].conv1.conv.bias is None
    out = net(torch.randn(2, 3, 64, 64))["res3"]
    assert out.shape == (2, 512, 8, 8) and torch.isfinite(out).all()
    out.mean().backward()
    assert net.stem.conv1.conv.weight.grad is not None


def test_frozen_bn_eps_is_honoured() -> None:
    outs = []
    for eps in (0.0, 1e-5):
        net = ResNet(BackboneConfig(depth=18, norm_eps=eps), out_features=("res2",)).eval()
        assert all(m.eps == eps for m in net.modules() if isinstance(m, FrozenBatchNorm2d))
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, FrozenBatchNorm2d):
                    m.running_var.fill_(1e-4)  # eps matters when variances are small
        torch.manual_seed(0)
        nn.init.normal_(net.stem.conv1.conv.weight)
        x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            outs.append(net(x)["res2"])
    assert not torch.allclose(outs[0], outs[1], rtol=1e-3, atol=0)


def test_init_for_training_from_scratch() -> None:
    torch.manual_seed(0)
    net = ResNet(BackboneConfig(depth=50, norm="bn", freeze_at=0))
    w = net.res4[0].conv2.conv.weight  # 256 -> 256, 3x3: fan_out = 2304
    assert abs(w.std().item() - math.sqrt(2 / (256 * 9))) < 0.02 * math.sqrt(2 / (256 * 9))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    # No zero-init of the last norm of each residual branch.
    assert torch.equal(net.res2[0].conv3.norm.weight, torch.ones(256))


def test_make_stage_as_c4_head_matches_torchvision_layer4() -> None:
    tv = tv_resnet.resnet50(norm_layer=torchvision.ops.FrozenBatchNorm2d).eval()
    randomize_(tv, seed=3)
    head = make_stage(
        block_kind="bottleneck",
        num_blocks=3,
        in_channels=1024,
        bottleneck_channels=512,
        out_channels=2048,
        first_stride=2,
        groups=1,
        norm="frozen_bn",
        eps=1e-5,
        gn_groups=32,
        stride_in_1x1=False,
    ).eval()
    state = {}
    for key, value in tv.layer4.state_dict().items():
        state[torchvision_resnet_key("layer4." + key).removeprefix("res5.")] = value
    head.load_state_dict(state, strict=True)
    rois = torch.randn(4, 1024, 14, 14, generator=torch.Generator().manual_seed(4)).relu()
    with torch.no_grad():
        ref = tv.layer4(rois)
        out = head(rois)
    assert out.shape == (4, 2048, 7, 7)
    assert rel_max_diff(out, ref) <= REL_TOL


def test_invalid_configs() -> None:
    with pytest.raises(ValueError, match="BasicBlock"):
        ResNet(BackboneConfig(depth=18, groups=32, width_per_group=4))
    with pytest.raises(ValueError, match="out_features"):
        ResNet(BackboneConfig(), out_features=("res6",))
    with pytest.raises(ValueError, match="freeze_at"):
        ResNet(BackboneConfig(freeze_at=6))
    with pytest.raises(ValueError, match="depth"):
        ResNet(BackboneConfig(depth=42))  # type: ignore[arg-type]
