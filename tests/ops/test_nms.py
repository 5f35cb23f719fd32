"""batched_nms_topk equals torchvision's class-by-class NMS truncated to the quota."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms, nms

from maskrcnn.ops.nms import batched_nms_topk


def _candidates(n: int, num_classes: int, spread: float, seed: int, *, ties: bool = False):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * spread
    wh = torch.rand(n, 2, generator=gen) * 100 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    if ties:  # 51 distinct scores
        scores = (torch.rand(n, generator=gen) * 50).round() / 50
    else:  # distinct scores, so every order is defined
        scores = (torch.randperm(n, generator=gen).float() + 1) / (n + 1)
    idxs = torch.randint(0, num_classes, (n,), generator=gen)
    return boxes, scores, idxs


def _class_by_class(boxes, scores, idxs, iou_threshold):
    """The definition: greedy NMS within each class, all kept boxes by descending score.

    (torchvision's nms takes equal scores in index order, as ``batched_nms_topk`` does.)
    """
    kept = [
        torch.where(idxs == c)[0][nms(boxes[idxs == c], scores[idxs == c], iou_threshold)]
        for c in torch.unique(idxs).tolist()
    ]
    keep = torch.sort(torch.cat(kept)).values if kept else torch.empty(0, dtype=torch.int64)
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]  # ties: index


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_equals_class_by_class_nms_truncated(seed, iou_threshold):
    gen = torch.Generator().manual_seed(100 + seed)
    n = int(torch.randint(1, 3000, (1,), generator=gen))
    num_classes = int(torch.randint(1, 91, (1,), generator=gen))
    spread = float(torch.rand(1, generator=gen)) * 800 + 5
    boxes, scores, idxs = _candidates(n, num_classes, spread, seed)
    full = _class_by_class(boxes, scores, idxs, iou_threshold)
    for max_keep in (1, 100, 1000, n + 5):
        got = batched_nms_topk(boxes, scores, idxs, iou_threshold, max_keep)
        assert torch.equal(got, full[:max_keep])


def test_equals_torchvision_batched_nms_past_its_coordinate_trick():
    """Above 4,000 boxes torchvision's batched_nms runs class by class too: the same indices."""
    boxes, scores, idxs = _candidates(9000, 90, 700.0, seed=7)
    want = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(batched_nms_topk(boxes, scores, idxs, 0.5, 100), want[:100])
    assert torch.equal(batched_nms_topk(boxes, scores, idxs, 0.5, 20000), want)


def test_box_head_candidates_1000_proposals_by_90_classes():
    """The detection case: every class's jittered copy of each proposal, near-uniform scores."""
    gen = torch.Generator().manual_seed(3)
    proposals, _, _ = _candidates(1000, 1, 600.0, seed=3)
    boxes = (proposals[:, None, :] + torch.randn(1000, 90, 4, generator=gen) * 3).reshape(-1, 4)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = torch.softmax(torch.randn(1000, 91, generator=gen).double() * 0.1, dim=1)
    scores = scores[:, 1:].reshape(-1).float()
    labels = torch.arange(90).repeat(1000)
    want = _class_by_class(boxes, scores, labels, 0.5)
    assert torch.equal(batched_nms_topk(boxes, scores, labels, 0.5, 100), want[:100])


def test_ties_are_taken_lower_index_first():
    boxes, scores, idxs = _candidates(2500, 7, 300.0, seed=11, ties=True)
    full = _class_by_class(boxes, scores, idxs, 0.5)
    every = batched_nms_topk(boxes, scores, idxs, 0.5, 10**6)
    assert set(every.tolist()) == set(full.tolist())
    for max_keep in (10, 50, 200):
        got = batched_nms_topk(boxes, scores, idxs, 0.5, max_keep)
        assert torch.equal(got, full[:max_keep])
        assert torch.equal(got, every[:max_keep])


def test_one_class_that_suppresses_almost_everything():
    """The worst case for an early stop: most candidates overlap the first kept box."""
    gen = torch.Generator().manual_seed(5)
    base = torch.tensor([100.0, 100.0, 300.0, 300.0])
    boxes = base + torch.randn(5000, 4, generator=gen)
    boxes[4990:] += 1000.0  # ten boxes far away survive
    scores = (torch.randperm(5000, generator=gen).float() + 1) / 5001
    idxs = torch.zeros(5000, dtype=torch.int64)
    want = _class_by_class(boxes, scores, idxs, 0.5)
    assert torch.equal(batched_nms_topk(boxes, scores, idxs, 0.5, 1000), want)


def test_empty_inputs_quota_zero_and_float64():
    boxes, scores, idxs = _candidates(300, 4, 200.0, seed=2)
    empty = batched_nms_topk(boxes[:0], scores[:0], idxs[:0], 0.5, 100)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    assert batched_nms_topk(boxes, scores, idxs, 0.5, 0).shape == (0,)
    want = _class_by_class(boxes.double(), scores.double(), idxs, 0.5)
    got = batched_nms_topk(boxes.double(), scores.double(), idxs, 0.5, 50)
    assert torch.equal(got, want[:50])


@pytest.mark.parametrize("seed", range(4))
def test_quota_never_reached_scans_every_chunk(seed):
    """Crowded clusters keep fewer boxes than the quota: all 8000 candidates, chunk by chunk."""
    gen = torch.Generator().manual_seed(20 + seed)
    centres = torch.rand(10, 1, 2, generator=gen) * 1000  # 10 clusters of 800 boxes
    corners = centres + torch.randn(10, 800, 2, generator=gen) * 2
    boxes = torch.cat([corners, corners + 50], dim=2).reshape(-1, 4)
    scores = (torch.randperm(8000, generator=gen).float() + 1) / 8001
    idxs = torch.randint(0, 3, (8000,), generator=gen)
    full = _class_by_class(boxes, scores, idxs, 0.5)
    assert 30 <= full.numel() < 100  # at least one per cluster and class
    # Never reaching the quota, the walk covers chunks of 256, 512, ..., 4096 and the rest.
    assert torch.equal(batched_nms_topk(boxes, scores, idxs, 0.5, 100), full)
