"""torchvision Keypoint R-CNN key names -> ours."""

from __future__ import annotations

import pytest

from maskrcnn.weights.torchvision_keys import torchvision_key


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        ("roi_heads.keypoint_head.0.weight", "roi_heads.keypoint_head.convs.0.conv.weight"),
        ("roi_heads.keypoint_head.14.bias", "roi_heads.keypoint_head.convs.7.conv.bias"),
        (
            "roi_heads.keypoint_predictor.kps_score_lowres.weight",
            "roi_heads.keypoint_head.predictor.weight",
        ),
    ],
)
def test_keypoint_keys(theirs, ours):
    assert torchvision_key(theirs) == ours


def test_unknown_keypoint_keys():
    assert torchvision_key("roi_heads.keypoint_predictor.other.weight") is None
    with pytest.raises(ValueError, match="a ReLU's index"):
        torchvision_key("roi_heads.keypoint_head.3.weight")
