"""The model to train: a preset with checked, typed overrides."""

from __future__ import annotations

import json

import pytest

from maskrcnn.config import preset
from maskrcnn.train.model_spec import ModelSpec


def test_overrides_are_checked_converted_and_round_trip() -> None:
    spec = ModelSpec(
        preset="r18_fpn",
        overrides={"rpn.nms_thresh": 1, "anchors.sizes": ((16,), (32,)), "input.min_size": (96,)},
    )
    assert (
        spec.overrides["rpn.nms_thresh"] == 1.0 and type(spec.overrides["rpn.nms_thresh"]) is float
    )
    cfg = spec.model_config(4, ("__background__", "a", "b", "c"))
    assert cfg.num_classes == 4 and cfg.category_names[1] == "a"
    assert cfg.anchors.sizes == ((16,), (32,)) and cfg.input.min_size == (96,)
    assert cfg.backbone.depth == preset("r18_fpn").backbone.depth == 18
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert hash(ModelSpec("r18_fpn", [("rpn.nms_thresh", 1.0)])) == hash(
        ModelSpec("r18_fpn", {"rpn.nms_thresh": 1.0})
    )
    assert ModelSpec(overrides=[("fpn.out_channels", 64), ("fpn.out_channels", 32)]).overrides == {
        "fpn.out_channels": 32  # the last value wins
    }


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"preset": "r99"}, r"TrainConfig.model.preset: unknown preset"),
        ({"imagenet": 3}, "TrainConfig.model.imagenet"),
        ({"overrides": {"input.min_size": 512}}, r"'input.min_size': expected a list"),
        ({"overrides": {"rpn.no_such_field": 1}}, "unknown config key 'rpn.no_such_field'"),
        ({"overrides": {"num_classes": 5}}, "set from the dataset"),
        ({"overrides": {"category_names": ("a",)}}, "set from the dataset"),
        ({"overrides": {"rpn": 1}}, "names a whole section"),
        ({"overrides": {"backbone.norm": 3}}, "expected str"),
        ({"overrides": ["rpn.nms_thresh=0.5"]}, "expected a mapping"),
    ],
)
def test_bad_specs_name_the_field(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelSpec(**changes)
    with pytest.raises(ValueError, match="unknown field"):
        ModelSpec.from_dict({"preset": "r18_fpn", "extra": 1})
