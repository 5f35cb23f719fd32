"""Keypoint R-CNN parity with torchvision's ``keypointrcnn_resnet50_fpn`` (same weights, inputs).

As for the mask model: torchvision's model is built with ``weights=None``, every parameter and
BatchNorm statistic randomised, ``box_score_thresh=0``, and two odd-sized images go through
both. Every one of our detections must match one of torchvision's (same label, box IoU >
0.999), with its keypoints within 1e-3 pixels and their scores within 1e-4. The loss and the
heatmap decoding are compared with torchvision's functions on identical inputs.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.models.detection import keypointrcnn_resnet50_fpn
from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv_heatmaps
from torchvision.models.detection.roi_heads import keypointrcnn_loss
from torchvision.ops import box_iou

from maskrcnn import from_torchvision
from maskrcnn.modeling.keypoint_head import heatmaps_to_keypoints
from maskrcnn.modeling.keypoint_losses import keypoint_heatmap_targets, keypoint_loss
from maskrcnn.modeling.randomize import randomize_

BUILDER_KWARGS = dict(box_score_thresh=0.0, min_size=320, max_size=480)
DETECTIONS = 20  # keypoints are decoded one RoI at a time; 20 per image keeps the test short
SLACK = 20  # the reference keeps more, so that a tie at the cut-off is not a mismatch


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(5)
    reference = keypointrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_detections_per_img=DETECTIONS + SLACK,
        **BUILDER_KWARGS,
    )  # fmt: skip
    randomize_(reference, seed=5).eval()
    ours = from_torchvision(
        reference.state_dict(),
        "keypoint_v1",
        # no norm_eps: built with weights=None, its BatchNorm buffers say eps 1e-5
        box_detections_per_img=DETECTIONS,
        **BUILDER_KWARGS,
    )
    return reference, ours


def test_config_is_torchvisions_keypoint_model(pair):
    _, ours = pair
    cfg = ours.cfg
    assert not cfg.mask_on and ours.roi_heads.mask_head is None
    assert cfg.num_classes == 2 and cfg.keypoint_head is not None
    assert cfg.keypoint_head.num_keypoints == 17 and len(cfg.keypoint_head.keypoint_names) == 17
    assert cfg.keypoint_head.pooler.sampling_ratio == 2 and not cfg.keypoint_head.pooler.aligned


def test_end_to_end_keypoints_match(pair, test_images):
    reference, ours = pair
    with torch.no_grad():
        ref_out = reference(test_images)
        our_out = ours(test_images)
    for ref, out in zip(ref_out, our_out):
        assert len(out["boxes"]) == DETECTIONS
        assert "masks" not in out
        assert out["keypoints"].shape == (DETECTIONS, 17, 3)
        assert out["keypoints_scores"].shape == (DETECTIONS, 17)
        iou = box_iou(out["boxes"], ref["boxes"])
        iou = torch.where(out["labels"][:, None] == ref["labels"][None, :], iou, 0.0)
        best_iou, idx = iou.max(dim=1)
        assert bool((best_iou > 0.999).all()), "unmatched detections"
        assert idx.unique().numel() == idx.numel()
        kp_diff = (out["keypoints"] - ref["keypoints"][idx]).abs().max().item()
        score_diff = (out["keypoints_scores"] - ref["keypoints_scores"][idx]).abs().max().item()
        assert kp_diff < 1e-3, kp_diff
        assert score_diff < 1e-4, score_diff


def test_keypoint_head_logits_match(pair):
    reference, ours = pair
    features = torch.randn(5, 256, 14, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = reference.roi_heads.keypoint_predictor(reference.roi_heads.keypoint_head(features))
        out = ours.roi_heads.keypoint_head(features)
    assert out.shape == (5, 17, 56, 56)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def _roi_case(gen: torch.Generator, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoIs and keypoints with every edge case: outside, invisible, on the right/bottom edge."""
    xy = torch.rand(n, 2, generator=gen) * 100
    wh = torch.rand(n, 2, generator=gen) * 80 + 2
    rois = torch.cat([xy, xy + wh], dim=1)
    pts = (
        rois[:, None, :2]
        + torch.rand(n, k, 2, generator=gen) * 1.4 * wh[:, None]
        - 0.2 * wh[:, None]
    )
    vis = torch.randint(0, 3, (n, k), generator=gen).float()
    keypoints = torch.cat([pts, vis[..., None]], dim=2)
    keypoints[0, 0, :2] = rois[0, 2:]  # exactly on the bottom-right corner: last cell
    keypoints[0, 0, 2] = 2
    keypoints[1, 1, 0] = rois[1, 2]
    keypoints[1, 1, 2] = 1
    return rois, keypoints


def test_keypoint_loss_equals_torchvisions():
    gen = torch.Generator().manual_seed(2)
    n, k = 12, 5
    rois, keypoints = _roi_case(gen, n, k)
    logits = torch.randn(n, k, 56, 56, generator=gen, dtype=torch.float64, requires_grad=True)
    ours = keypoint_loss(logits, rois.double(), keypoints.double())
    # torchvision's takes per-image proposals, ground truth and matched indices: two images
    split = [7, 5]
    gt = [keypoints[:7].flip(0).double(), keypoints[7:].double()]
    matched = [torch.arange(6, -1, -1), torch.arange(5)]
    ref = keypointrcnn_loss(logits, list(rois.double().split(split)), gt, matched)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(ours, logits)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15)


def test_keypoint_targets_edge_cases():
    rois = torch.tensor([[10.0, 20.0, 66.0, 76.0]])  # 56 x 56: one pixel per cell
    keypoints = torch.tensor(
        [
            [
                [10.0, 20.0, 2.0],  # top-left corner: cell 0
                [66.0, 76.0, 2.0],  # bottom-right edge: last cell
                [40.5, 30.2, 1.0],  # occluded but labelled: valid
                [40.5, 30.2, 0.0],  # not labelled: invalid
                [9.9, 30.0, 2.0],  # left of the RoI: invalid
                [30.0, 76.1, 2.0],  # below the RoI: invalid
            ]
        ]
    )
    targets, valid = keypoint_heatmap_targets(keypoints, rois, 56)
    assert valid.tolist() == [[True, True, True, False, False, False]]
    assert targets[0, 0] == 0 and targets[0, 1] == 56 * 56 - 1
    assert targets[0, 2] == 10 * 56 + 30


def test_keypoint_loss_zero_without_valid_keypoints():
    logits = torch.randn(3, 4, 56, 56, requires_grad=True)
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    keypoints = torch.zeros(3, 4, 3)
    keypoints[..., :2] = 5.0  # inside, but v = 0
    loss = keypoint_loss(logits, rois, keypoints)
    assert loss.item() == 0.0 and loss.requires_grad
    empty = keypoint_loss(torch.zeros(0, 4, 56, 56, requires_grad=True), rois[:0], keypoints[:0])
    assert empty.item() == 0.0


def test_keypoint_loss_rejects_mismatched_keypoints():
    with pytest.raises(ValueError, match="do not match heatmaps"):
        keypoint_loss(torch.zeros(2, 4, 56, 56), torch.zeros(2, 4), torch.zeros(2, 5, 3))


def test_heatmap_decoding_equals_torchvisions():
    gen = torch.Generator().manual_seed(4)
    maps = torch.randn(6, 3, 56, 56, generator=gen)
    xy = torch.rand(6, 2, generator=gen) * 50
    wh = torch.tensor([[0.3, 0.4], [1.0, 1.0], [17.5, 40.2], [80.0, 33.3], [3.7, 120.9], [56, 56]])
    boxes = torch.cat([xy, xy + wh], dim=1)
    keypoints, scores = heatmaps_to_keypoints(maps, boxes)
    ref_keypoints, ref_scores = tv_heatmaps(maps, boxes)
    torch.testing.assert_close(keypoints, ref_keypoints, rtol=0, atol=1e-5)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-6)
    empty, empty_scores = heatmaps_to_keypoints(maps[:0], boxes[:0])
    assert empty.shape == (0, 3, 3) and empty_scores.shape == (0, 3)


def test_training_forward_with_torchvision_targets(pair, test_images):
    """torchvision's target format (boxes, labels, keypoints; no masks) trains our model."""
    _, ours = pair
    targets = []
    for image in test_images:
        h, w = image.shape[-2:]
        boxes = torch.tensor([[20.0, 30.0, 120.0, 200.0], [100.0, 10.0, 180.0, 90.0]])
        kps = torch.zeros(2, 17, 3)
        kps[..., 0] = torch.linspace(25, 115, 17)
        kps[..., 1] = torch.linspace(35, 190, 17)
        kps[..., 2] = 2
        kps[1, :, :2] = kps[1, :, :2] * 0.5 + 60
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 1]), "keypoints": kps})
    ours.train()
    try:
        losses = ours(test_images, targets)
    finally:
        ours.eval()
    assert set(losses) == {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss_keypoint",
    }
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_keypoint"] > 0


def test_no_detections_give_empty_keypoints(pair, test_images):
    _, ours = pair
    saved = ours.roi_heads.box_cfg
    ours.roi_heads.box_cfg = dataclasses.replace(saved, score_thresh=1.0)
    try:
        (out,) = ours([test_images[0]])
    finally:
        ours.roi_heads.box_cfg = saved
    assert out["boxes"].shape == (0, 4)
    assert out["keypoints"].shape == (0, 17, 3) and out["keypoints_scores"].shape == (0, 17)


def test_keypoint_variant_errors():
    state = {"roi_heads.box_predictor.cls_score.weight": torch.zeros(2, 1024)}
    with pytest.raises(ValueError, match="variant must be one of"):
        from_torchvision(state, "keypoint_v2")
    with pytest.raises(ValueError, match="num_keypoints: only for variant 'keypoint_v1'"):
        from_torchvision(state, "v1", num_keypoints=5)


def test_instances_carry_keypoints():
    from maskrcnn.structures import Instances, as_instances

    inst = Instances(
        image_size=(10, 10),
        boxes=torch.zeros(3, 4),
        labels=torch.tensor([1, 2, 3]),
        scores=torch.tensor([0.9, 0.8, 0.7]),
        keypoints=torch.arange(27.0).reshape(3, 3, 3),
        keypoints_scores=torch.arange(9.0).reshape(3, 3),
    )
    picked = inst[torch.tensor([False, True, True])]
    torch.testing.assert_close(picked.keypoints, inst.keypoints[1:])
    torch.testing.assert_close(picked.keypoints_scores, inst.keypoints_scores[1:])
    assert set(inst.to_dict()) == {"boxes", "labels", "scores", "keypoints", "keypoints_scores"}
    target = {"boxes": torch.zeros(1, 4), "labels": torch.ones(1, dtype=torch.int64)}
    with pytest.raises(ValueError, match=r"missing field\(s\) \['masks'\]"):
        as_instances(target, (10, 10))
    with pytest.raises(ValueError, match="keypoints must be \\[G, K, 3\\]"):
        as_instances({**target, "keypoints": torch.zeros(1, 3)}, (10, 10))
    assert as_instances({**target, "keypoints": torch.zeros(1, 4, 3)}, (10, 10)).masks is None
