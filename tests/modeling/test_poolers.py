"""Multi-level RoI pooling: the FPN level rule and one pooled row per RoI."""

from __future__ import annotations

import math

import torch

from maskrcnn.config import PoolerConfig
from maskrcnn.modeling.poolers import MultiLevelRoIPooler, assign_levels
from maskrcnn.ops import roi_align


def test_assign_levels_follows_the_papers_rule_and_clamps():
    # sqrt(area) 224 -> level 4; 112 -> 3; 448 -> 5; tiny -> 2 (clamped); huge -> 5 (clamped).
    sides = [224.0, 112.0, 448.0, 1.0, 5000.0, 0.0, math.nan]
    boxes = torch.tensor([[10.0, 10.0, 10.0 + s, 10.0 + s] for s in sides])
    levels = assign_levels(boxes, min_level=2, max_level=5)
    # Zero-area boxes go to the finest level, and so do NaN boxes (rather than to none).
    assert levels.tolist() == [2, 1, 3, 0, 3, 0, 0]


def test_every_roi_is_pooled_from_its_level():
    torch.manual_seed(0)
    strides = (4, 8, 16, 32)
    features = [torch.randn(2, 5, 128 // s, 160 // s) for s in strides]
    cfg = PoolerConfig(output_size=7, sampling_ratio=2, aligned=True)
    pooler = MultiLevelRoIPooler(cfg=cfg, strides=strides)
    xy = torch.rand(12, 2) * 100
    wh = torch.rand(12, 2) * 120 + 1
    boxes = [torch.cat([xy, xy + wh], dim=1)[:7], torch.cat([xy, xy + wh], dim=1)[7:]]
    boxes[1][0] = math.nan  # a diverged box: pooled from P2 (NaN), not left as zeros
    out = pooler(features, boxes)
    rois = torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)]
    )
    levels = assign_levels(rois[:, 1:], min_level=2, max_level=5)
    for k in range(len(rois)):
        level = int(levels[k])
        want = roi_align(features[level], rois[k : k + 1], 7, 1.0 / strides[level], 2, True)
        torch.testing.assert_close(out[k : k + 1], want, rtol=0, atol=0, equal_nan=True)
