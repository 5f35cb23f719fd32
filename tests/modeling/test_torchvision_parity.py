"""End-to-end and per-stage parity with torchvision's Mask R-CNN (same weights, same inputs).

torchvision's model is built with ``weights=None``, every parameter and BatchNorm statistic is
randomised, ``box_score_thresh=0`` so that 100 detections reach the mask head, and a batch of
two odd-sized images goes through both models. Stage tests pin a mismatch to its stage.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import box_iou

from maskrcnn import from_torchvision
from maskrcnn.modeling.postprocess import to_image_frame
from maskrcnn.modeling.randomize import randomize_
from maskrcnn.ops.paste import paste_masks_torchvision

BUILDER_KWARGS = dict(box_score_thresh=0.0, min_size=320, max_size=480)
# Random weights give near-uniform class scores, so many candidates tie at the 100th place.
# The reference keeps a few more detections so that a tie at the cut-off can be told apart
# from a real mismatch.
SLACK = 20


def _pair(variant: str, seed: int):
    build = maskrcnn_resnet50_fpn if variant == "v1" else maskrcnn_resnet50_fpn_v2
    torch.manual_seed(seed)
    reference = build(
        weights=None, weights_backbone=None, box_detections_per_img=100 + SLACK, **BUILDER_KWARGS
    )
    randomize_(reference, seed=seed).eval()
    # A v1 model built with weights=None has BatchNorm (eps 1e-5), not the published eps 0:
    # from_torchvision reads that from its num_batches_tracked buffers (no norm_eps given).
    ours = from_torchvision(reference.state_dict(), variant, **BUILDER_KWARGS)
    if variant == "v1":
        assert ours.cfg.backbone.norm_eps == 1e-5
    return reference, ours


@pytest.fixture(scope="module", params=["v1", "v2"])
def pair(request):
    return _pair(request.param, seed=7 if request.param == "v1" else 11)


def _match(ref: dict, ours: dict) -> torch.Tensor:
    """Index into ``ref`` for each of our detections: same label, box IoU > 0.999.

    ``ref`` holds 100 + SLACK detections. One of ours may match past the 100th only if its
    score ties the reference's 100th score (within 1e-4): the cut-off fell inside a tie.
    """
    iou = box_iou(ours["boxes"], ref["boxes"])
    same_label = ours["labels"][:, None] == ref["labels"][None, :]
    iou = torch.where(same_label, iou, torch.zeros_like(iou))
    best_iou, best = iou.max(dim=1)
    assert bool((best_iou > 0.999).all()), f"unmatched detections: {(best_iou <= 0.999).sum()}"
    assert best.unique().numel() == best.numel(), "two of our detections match one reference"
    cutoff = len(ours["boxes"])
    beyond = best >= cutoff
    if beyond.any():
        tie_score = ref["scores"][cutoff - 1]
        gap = (ref["scores"][best[beyond]] - tie_score).abs().max().item()
        assert gap < 1e-4, f"matched past the cut-off without a tie (score gap {gap})"
        assert int(beyond.sum()) <= 3
    return best


def test_end_to_end_parity(pair, test_images):
    reference, ours = pair
    with torch.no_grad():
        ref_out = reference(test_images)
        our_out = ours(test_images)
    for ref, out, image in zip(ref_out, our_out, test_images):
        assert len(out["boxes"]) == 100, "the test needs 100 detections through the mask head"
        idx = _match(ref, out)
        box_diff = (out["boxes"] - ref["boxes"][idx]).abs().max().item()
        score_diff = (out["scores"] - ref["scores"][idx]).abs().max().item()
        mask_diff = (out["masks"] - ref["masks"][idx]).abs().max().item()
        assert out["masks"].shape == (100, 1, *image.shape[-2:])
        assert out["labels"].dtype == torch.int64
        assert box_diff < 1e-3, box_diff
        assert score_diff < 1e-4, score_diff
        assert mask_diff < 1e-3, mask_diff


def test_preprocessing_matches(pair, test_images):
    reference, ours = pair
    ref_list, _ = reference.transform(test_images)
    batch = ours.preprocessor(test_images)
    assert batch.image_sizes == [tuple(s) for s in ref_list.image_sizes]
    torch.testing.assert_close(batch.tensor, ref_list.tensors, rtol=0, atol=1e-5)


def test_backbone_anchors_and_proposals_match(pair, test_images):
    reference, ours = pair
    with torch.no_grad():
        ref_list, _ = reference.transform(test_images)
        ref_features = reference.backbone(ref_list.tensors)
        batch = ours.preprocessor(test_images)
        features = ours.backbone(batch.tensor)
        for ref_name, name in zip(["0", "1", "2", "3", "pool"], ours.rpn_features):
            torch.testing.assert_close(features[name], ref_features[ref_name], rtol=1e-4, atol=1e-4)

        level_maps = [features[k] for k in ours.rpn_features]
        ref_anchors = reference.rpn.anchor_generator(ref_list, list(ref_features.values()))
        our_anchors = torch.cat(ours.rpn.anchor_generator(batch.padded_size, level_maps))
        torch.testing.assert_close(our_anchors, ref_anchors[0], rtol=0, atol=0)

        ref_proposals, _ = reference.rpn(ref_list, ref_features)
        proposals = ours.rpn(batch, level_maps, params=ours.rpn.test_params).proposals
    for ref_p, p in zip(ref_proposals, proposals):
        assert p.shape == ref_p.shape
        # Same set of boxes; near-equal scores may swap neighbours in the order.
        distance = torch.cdist(p, ref_p, p=float("inf"))  # [P, P] max coordinate difference
        nearest = distance.min(dim=1)
        assert nearest.indices.unique().numel() == len(p)
        assert nearest.values.max().item() < 1e-3
        # Only local swaps: no proposal moves more than a few places in the ranking.
        shift = (nearest.indices - torch.arange(len(p))).abs().max().item()
        assert shift <= 5, shift


def test_pooled_features_and_detections_match(pair, test_images):
    reference, ours = pair
    with torch.no_grad():
        ref_list, _ = reference.transform(test_images)
        ref_features = reference.backbone(ref_list.tensors)
        ref_proposals, _ = reference.rpn(ref_list, ref_features)
        features = ours.backbone(ours.preprocessor(test_images).tensor)
        level_maps = [features[k] for k in ours.roi_features]
        pooled = ours.roi_heads.box_pooler(level_maps, ref_proposals)
        ref_pooled = reference.roi_heads.box_roi_pool(
            ref_features, ref_proposals, ref_list.image_sizes
        )
        torch.testing.assert_close(pooled, ref_pooled, rtol=1e-4, atol=1e-4)

        ref_dets, _ = reference.roi_heads(ref_features, ref_proposals, ref_list.image_sizes)
        dets = ours.roi_heads.detect(level_maps, ref_proposals, ref_list.image_sizes)
    for ref, det in zip(ref_dets, dets):
        idx = _match(ref, det.to_dict())
        torch.testing.assert_close(det.scores, ref["scores"][idx], rtol=0, atol=1e-4)
        torch.testing.assert_close(det.masks, ref["masks"][idx], rtol=0, atol=1e-4)


def test_torchvision_paste_is_bit_exact():
    gen = torch.Generator().manual_seed(3)
    masks = torch.rand(12, 1, 28, 28, generator=gen)
    xy = torch.rand(12, 2, generator=gen) * 120 - 20
    wh = torch.rand(12, 2, generator=gen) * 90 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=1)
    ours = paste_masks_torchvision(masks, boxes, (97, 131))
    reference = paste_masks_in_image(masks, boxes, (97, 131))
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)


def test_to_image_frame_rescales_boxes():
    from maskrcnn.structures import Instances

    result = Instances(
        image_size=(100, 200),
        boxes=torch.tensor([[10.0, 20.0, 50.0, 60.0]]),
        labels=torch.tensor([1]),
        scores=torch.tensor([0.9]),
        masks=torch.ones(1, 1, 28, 28),
    )
    mapped = to_image_frame(result, (50, 400), paste="grid_sample")
    torch.testing.assert_close(mapped.boxes, torch.tensor([[20.0, 10.0, 100.0, 30.0]]))
    assert mapped.masks.shape == (1, 1, 50, 400)
    assert mapped.masks[0, 0, 20, 60] == 1.0 and mapped.masks[0, 0, 40, 60] == 0.0
