"""Configuration: presets, overrides, JSON round trip, clear errors."""

from __future__ import annotations

import json

import pytest

from maskrcnn.config import ModelConfig, override, preset, torchvision_v1, torchvision_v2


def test_dict_round_trip_through_json():
    for cfg in (preset("r50_fpn"), preset("r50_c4"), torchvision_v1(), torchvision_v2()):
        data = json.loads(json.dumps(cfg.to_dict()))
        assert ModelConfig.from_dict(data) == cfg


def test_unknown_field_is_named():
    data = preset("r18_fpn").to_dict()
    data["rpn"]["nms_treshold"] = 0.5
    with pytest.raises(ValueError, match="nms_treshold"):
        ModelConfig.from_dict(data)


def test_override_dotted_keys():
    cfg = override(preset("r50_fpn"), "box_head.pooler.op", "pool")
    assert cfg.box_head.pooler.op == "pool"
    assert cfg.mask_head.pooler.op == "align"
    with pytest.raises(ValueError, match="box_head.nope"):
        override(cfg, "box_head.nope", 1)


def test_torchvision_quirks_are_configuration():
    v1 = torchvision_v1()
    assert v1.box_head.pooler.aligned is False and v1.box_head.pooler.sampling_ratio == 2
    assert v1.anchors.round_base_anchors and v1.anchors.strides_from_grid
    assert v1.mask_head.paste == "torchvision" and v1.backbone.norm_eps == 0.0
    ours = preset("r50_fpn")
    assert ours.box_head.pooler.aligned and ours.mask_head.paste == "grid_sample"


def test_precision_is_a_checked_field_defaulting_to_fp32():
    cfg = preset("r18_fpn")
    assert cfg.precision == "fp32"
    assert cfg.replace(precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match=r"config.precision: must be one of .*'half'"):
        cfg.replace(precision="half")
    data = cfg.replace(precision="auto").to_dict()
    assert ModelConfig.from_dict(json.loads(json.dumps(data))).precision == "auto"
    del data["precision"]  # a configuration saved before the field existed
    assert ModelConfig.from_dict(data) == cfg


@pytest.mark.parametrize(
    "key, value",
    [
        ("rpn.nms_thresh", -1.0),
        ("rpn.positive_fraction", 1.5),
        ("box_head.score_thresh", float("nan")),
        ("box_head.nms_thresh", 2.0),
        ("mask_head.threshold", -0.1),
    ],
)
def test_thresholds_and_fractions_outside_0_1_are_refused(key, value):
    with pytest.raises(ValueError, match=rf"{key}: must be a number in \[0, 1\]"):
        override(ModelConfig(), key, value)
