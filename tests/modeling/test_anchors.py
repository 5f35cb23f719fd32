"""Anchors against torchvision's AnchorGenerator, and detectron2-style unrounded anchors."""

from __future__ import annotations

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList

from maskrcnn.config import AnchorConfig
from maskrcnn.modeling.anchors import AnchorGenerator, cell_anchors


def _features(padded: tuple[int, int]) -> list[torch.Tensor]:
    h, w = padded
    sizes = [(h // 4, w // 4), (h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
    sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))  # P6 by stride-2 pooling
    return [torch.zeros(1, 4, a, b) for a, b in sizes]


def test_matches_torchvision_including_grid_derived_strides():
    cfg = AnchorConfig(round_base_anchors=True, strides_from_grid=True)
    padded = (800, 1088)  # P6 grid 13x17: torchvision's stride becomes 800 // 13 = 61
    features = _features(padded)
    reference = TVAnchorGenerator(
        tuple((s,) for s in (32, 64, 128, 256, 512)), ((0.5, 1.0, 2.0),) * 5
    )
    ref = reference(TVImageList(torch.zeros(1, 3, *padded), [padded]), features)[0]
    ours = torch.cat(AnchorGenerator(cfg=cfg, strides=(4, 8, 16, 32, 64))(padded, features))
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_nominal_strides_and_unrounded_anchors():
    cfg = AnchorConfig(round_base_anchors=False, strides_from_grid=False)
    features = _features((800, 1088))
    anchors = AnchorGenerator(cfg=cfg, strides=(4, 8, 16, 32, 64))((800, 1088), features)
    p6 = anchors[-1].reshape(13, 17, 3, 4)
    # Location (1, 2) of P6 is centred at (2 * 64, 1 * 64); the ratio-1 anchor is 512 wide.
    torch.testing.assert_close(p6[1, 2, 1], torch.tensor([-128.0, -192.0, 384.0, 320.0]))
    base = cell_anchors((32,), (0.5, 1.0, 2.0), round_to_int=False)
    widths, heights = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    torch.testing.assert_close(heights / widths, torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(widths * heights, torch.full((3,), 32.0**2))


def test_anchor_count_and_cache():
    gen = AnchorGenerator(cfg=AnchorConfig(), strides=(4, 8, 16, 32, 64))
    features = _features((256, 320))
    first = gen((256, 320), features)
    assert [len(a) for a in first] == [f.shape[-2] * f.shape[-1] * 3 for f in features]
    assert gen((256, 320), features)[0] is first[0]
