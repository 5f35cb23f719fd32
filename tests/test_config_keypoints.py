"""KeypointHeadConfig: checks, the optional section in dicts and overrides, the preset."""

from __future__ import annotations

import json

import pytest

from maskrcnn.config import (
    KeypointHeadConfig,
    ModelConfig,
    config_value,
    override,
    r18_fpn,
    torchvision_keypoint_v1,
)


def test_keypoint_head_round_trips_and_defaults_to_none():
    assert ModelConfig().keypoint_head is None and ModelConfig().mask_on
    cfg = torchvision_keypoint_v1()
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.keypoint_head is not None
    assert again.keypoint_head.skeleton[0] == (15, 13)
    plain = ModelConfig.from_dict(json.loads(json.dumps(ModelConfig().to_dict())))
    assert plain.keypoint_head is None


def test_overrides_create_the_optional_section():
    cfg = override(r18_fpn(3), "keypoint_head.conv_dim", 64)
    assert cfg.keypoint_head == KeypointHeadConfig(conv_dim=64)
    assert config_value(r18_fpn(3), "keypoint_head.num_convs") == 8
    assert config_value(r18_fpn(3), "keypoint_head") is None
    with pytest.raises(ValueError, match="unknown config key 'keypoint_head.nope'"):
        config_value(r18_fpn(3), "keypoint_head.nope")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_keypoints": 0}, "num_keypoints: must be >= 1"),
        ({"num_keypoints": 2, "keypoint_names": ("a",)}, "1 names for 2 keypoints"),
        ({"num_keypoints": 2, "skeleton": ((0, 2),)}, "skeleton: \\(0, 2\\) is not a pair"),
    ],
)
def test_keypoint_head_checks(changes, message):
    with pytest.raises(ValueError, match=message):
        KeypointHeadConfig(**changes)


def test_keypoint_head_needs_fpn():
    from maskrcnn.config import r50_c4
    from maskrcnn.modeling import build_model

    with pytest.raises(ValueError, match="keypoint_head: needs the 'fpn' design"):
        build_model(r50_c4(2).replace(keypoint_head=KeypointHeadConfig()))
