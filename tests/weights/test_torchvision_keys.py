"""torchvision's state-dict names -> ours: the ResNet and FPN key maps, and loading by them."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models import resnet as tv_resnet

from maskrcnn.config import BackboneConfig
from maskrcnn.modeling.backbone import ResNet
from maskrcnn.weights.torchvision_keys import (
    load_torchvision_resnet,
    torchvision_fpn_key,
    torchvision_resnet_key,
)


def test_torchvision_resnet_key() -> None:
    assert torchvision_resnet_key("conv1.weight") == "stem.conv1.conv.weight"
    assert torchvision_resnet_key("bn1.running_var") == "stem.conv1.norm.running_var"
    assert torchvision_resnet_key("layer1.2.conv3.weight") == "res2.2.conv3.conv.weight"
    assert torchvision_resnet_key("layer3.5.bn2.bias") == "res4.5.conv2.norm.bias"
    assert torchvision_resnet_key("layer4.0.downsample.0.weight") == "res5.0.shortcut.conv.weight"
    assert (
        torchvision_resnet_key("layer2.0.downsample.1.num_batches_tracked")
        == "res3.0.shortcut.norm.num_batches_tracked"
    )
    assert torchvision_resnet_key("fc.weight") is None
    assert torchvision_resnet_key("fc.bias") is None
    for bad in ("layer5.0.conv1.weight", "layer1.0.conv1.bias", "avgpool.x", "conv1.bias"):
        with pytest.raises(ValueError, match="not a torchvision ResNet key"):
            torchvision_resnet_key(bad)


def test_load_handles_num_batches_tracked() -> None:
    tv_state = tv_resnet.resnet18().state_dict()  # plain BatchNorm2d: has num_batches_tracked
    assert any(k.endswith("num_batches_tracked") for k in tv_state)
    frozen = ResNet(BackboneConfig(depth=18, norm="frozen_bn"))
    load_torchvision_resnet(frozen, tv_state)
    assert torch.equal(frozen.res3[0].conv1.norm.running_var, tv_state["layer2.0.bn1.running_var"])
    bn = ResNet(BackboneConfig(depth=18, norm="bn"))
    tv_state["layer1.0.bn1.num_batches_tracked"].fill_(7)
    load_torchvision_resnet(bn, tv_state)
    assert bn.res2[0].conv1.norm.num_batches_tracked.item() == 7
    with pytest.raises(ValueError, match="running_mean"):  # GN has no statistics
        load_torchvision_resnet(ResNet(BackboneConfig(depth=18, norm="gn")), tv_state)


def test_load_errors_name_the_keys() -> None:
    with torch.device("meta"):
        tv_state = tv_resnet.resnet18(norm_layer=torchvision.ops.FrozenBatchNorm2d).state_dict()
    net = ResNet(BackboneConfig(depth=18))
    before = net.stem.conv1.conv.weight.clone()
    state = {k: torch.zeros(v.shape) for k, v in tv_state.items()}
    del state["layer3.1.bn2.running_mean"]
    state["layer9.weird"] = torch.zeros(1)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(ValueError) as info:
        load_torchvision_resnet(net, state)
    message = str(info.value)
    assert "res4.1.conv2.norm.running_mean" in message
    assert "layer9.weird" in message
    assert "res2.0.conv1.conv.weight: (64, 64, 1, 1)" in message
    assert torch.equal(net.stem.conv1.conv.weight, before)  # nothing loaded
    # A truncated network is strict too: torchvision's layer4 has nowhere to go.
    with pytest.raises(ValueError, match=r"layer4\.0\.conv1\.weight"):
        load_torchvision_resnet(ResNet(BackboneConfig(depth=18), out_features=("res4",)), state)


def test_torchvision_fpn_key() -> None:
    cases = [
        ("backbone.body.conv1.weight", "backbone.bottom_up.stem.conv1.conv.weight"),
        (
            "backbone.body.layer2.3.bn3.running_mean",
            "backbone.bottom_up.res3.3.conv3.norm.running_mean",
        ),
        (
            "backbone.body.layer1.0.downsample.1.weight",
            "backbone.bottom_up.res2.0.shortcut.norm.weight",
        ),
        ("backbone.fpn.inner_blocks.0.0.weight", "backbone.fpn.lateral_convs.0.conv.weight"),
        ("backbone.fpn.inner_blocks.3.0.bias", "backbone.fpn.lateral_convs.3.conv.bias"),
        ("backbone.fpn.layer_blocks.2.0.weight", "backbone.fpn.output_convs.2.conv.weight"),
        # v2: conv without bias, then BN
        (
            "backbone.fpn.inner_blocks.1.1.running_var",
            "backbone.fpn.lateral_convs.1.norm.running_var",
        ),
        (
            "backbone.fpn.layer_blocks.0.1.num_batches_tracked",
            "backbone.fpn.output_convs.0.norm.num_batches_tracked",
        ),
        # legacy (version < 2) names
        ("backbone.fpn.inner_blocks.2.weight", "backbone.fpn.lateral_convs.2.conv.weight"),
        ("backbone.fpn.layer_blocks.3.bias", "backbone.fpn.output_convs.3.conv.bias"),
    ]
    for key, expected in cases:
        assert torchvision_fpn_key(key) == expected, key
    assert torchvision_fpn_key("backbone.body.fc.weight") is None
    for bad in (
        "rpn.head.conv.0.0.weight",
        "backbone.fpn.inner_blocks.0.0.running_mean",
        "backbone.fpn.extra.0.weight",
        "backbone.body.layer1.0.bn4.weight",
    ):
        with pytest.raises(ValueError, match="not a torchvision"):
            torchvision_fpn_key(bad)
