"""Box encode/decode against torchvision's BoxCoder, and their round trip."""

from __future__ import annotations

import math

import torch
from torchvision.models.detection._utils import BoxCoder

from maskrcnn.ops.boxes import decode_boxes, encode_boxes, scale_boxes


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 500
    wh = torch.rand(n, 2, generator=gen) * 200 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_matches_torchvision():
    weights = (10.0, 10.0, 5.0, 5.0)
    gt, proposals = _random_boxes(64, 0), _random_boxes(64, 1)
    reference = BoxCoder(weights).encode_single(gt, proposals)
    torch.testing.assert_close(encode_boxes(gt, proposals, weights), reference)


def test_decode_matches_torchvision_multiclass_and_clamp():
    weights = (10.0, 10.0, 5.0, 5.0)
    proposals = _random_boxes(50, 2)
    deltas = torch.randn(50, 4 * 7, generator=torch.Generator().manual_seed(3)) * 3
    deltas[0, 2] = 100.0  # exercises the exp clamp
    reference = BoxCoder(weights, bbox_xform_clip=math.log(1000.0 / 16)).decode(deltas, [proposals])
    ours = decode_boxes(deltas, proposals, weights)
    assert ours.shape == (50, 7, 4)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert torch.isfinite(ours).all()


def test_round_trip_and_empty():
    weights = (1.0, 1.0, 1.0, 1.0)
    gt, anchors = _random_boxes(30, 4), _random_boxes(30, 5)
    back = decode_boxes(encode_boxes(gt, anchors, weights), anchors, weights)[:, 0]
    torch.testing.assert_close(back, gt, rtol=1e-5, atol=1e-3)
    assert decode_boxes(torch.zeros(0, 8), torch.zeros(0, 4), weights).shape == (0, 2, 4)


def test_scale_boxes_to_another_size():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    scaled = scale_boxes(boxes, (100, 200), (50, 400))
    torch.testing.assert_close(scaled, torch.tensor([[20.0, 10.0, 60.0, 20.0]]))
