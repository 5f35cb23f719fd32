"""Training losses against torchvision's, on identical inputs.

The pure loss functions are compared directly with ``fastrcnn_loss`` and ``maskrcnn_loss``;
the RPN and the RoI heads are compared as whole stages in training mode (same weights, same
features, same ground truth, same random seed, so the same anchors and RoIs are sampled).
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.detection.roi_heads import fastrcnn_loss, maskrcnn_loss

from maskrcnn import from_torchvision
from maskrcnn.modeling.losses import fast_rcnn_losses, mask_loss, smooth_l1
from maskrcnn.modeling.randomize import randomize_
from maskrcnn.ops import roi_align
from maskrcnn.structures import ImageList, Instances


def test_fast_rcnn_losses_match_torchvision():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 6, generator=gen)
    deltas = torch.randn(40, 24, generator=gen)
    labels = torch.randint(0, 6, (40,), generator=gen)
    targets = torch.randn(40, 4, generator=gen)
    ref_cls, ref_box = fastrcnn_loss(logits, deltas, [labels[:25], labels[25:]], [targets])
    ours = fast_rcnn_losses(logits, deltas, labels, targets, smooth_l1_beta=1 / 9)
    torch.testing.assert_close(ours["loss_classifier"], ref_cls)
    torch.testing.assert_close(ours["loss_box_reg"], ref_box)


def test_mask_loss_matches_torchvision_with_targets_cut_by_roi_align():
    gen = torch.Generator().manual_seed(1)
    gt_masks = (torch.rand(3, 40, 50, generator=gen) > 0.5).to(torch.uint8)
    gt_labels = torch.tensor([2, 5, 1])
    proposals = torch.tensor(
        [[1.0, 2.0, 30.0, 25.0], [10.5, 4.2, 48.0, 39.0], [0.0, 0.0, 9.0, 9.0]]
    )
    matched = torch.tensor([0, 1, 2])
    logits = torch.randn(3, 7, 28, 28, generator=gen)
    reference = maskrcnn_loss(logits, [proposals], [gt_masks], [gt_labels], [matched])
    rois = torch.cat([matched[:, None].float(), proposals], dim=1)
    targets = roi_align(gt_masks[:, None].float(), rois, 28, 1.0, -1, False)[:, 0]
    torch.testing.assert_close(mask_loss(logits, gt_labels[matched], targets), reference)


def test_mask_loss_variants():
    logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
    targets = torch.ones(2, 4, 4)
    labels = torch.tensor([1, 2])
    # All-zero logits: BCE is log 2 per pixel; softmax over 3 classes is log 3.
    torch.testing.assert_close(mask_loss(logits, labels, targets), torch.tensor(0.6931472))
    softmax = mask_loss(logits, labels, targets, kind="softmax")
    torch.testing.assert_close(softmax, torch.tensor(1.0986123))
    agnostic = mask_loss(torch.zeros(2, 1, 4, 4), labels, targets)
    torch.testing.assert_close(agnostic, torch.tensor(0.6931472))
    empty = mask_loss(logits, labels[:0], targets[:0])
    empty.backward()
    assert empty.item() == 0.0 and logits.grad is not None
    with pytest.raises(ValueError, match="sigmoid"):
        mask_loss(logits, labels, targets, kind="focal")


def test_smooth_l1_beta_zero_is_l1():
    a, b = torch.tensor([0.0, 2.0]), torch.tensor([0.05, -1.0])
    assert smooth_l1(a, b, 0.0).item() == pytest.approx(3.05)


@pytest.fixture(scope="module")
def training_pair():
    torch.manual_seed(0)
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=256)
    randomize_(reference, seed=3).eval()
    ours = from_torchvision(reference.state_dict(), "v1", norm_eps=1e-5, min_size=256)
    gen = torch.Generator().manual_seed(5)
    images = [torch.rand(3, 256, 320, generator=gen), torch.rand(3, 224, 288, generator=gen)]
    masks, boxes = [], []
    for h, w, rects in [
        (256, 320, [(20, 30, 120, 140), (100, 90, 300, 250)]),
        (224, 288, [(5, 5, 60, 200)]),
    ]:
        m = torch.zeros(len(rects), h, w, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(rects):
            m[i, y0:y1, x0 + 5 : x1 - 5] = 1
        masks.append(m)
        boxes.append(torch.tensor(rects, dtype=torch.float32))
    labels = [torch.tensor([3, 17]), torch.tensor([1])]
    targets = [{"boxes": b, "labels": lab, "masks": m} for b, lab, m in zip(boxes, labels, masks)]
    return reference, ours, images, targets


def test_rpn_training_losses_match_torchvision(training_pair):
    reference, ours, images, targets = training_pair
    reference.rpn.train()
    ours.rpn.train()
    with torch.no_grad():
        batch = ours.preprocessor(images, resize=False)
        features = reference.backbone(batch.tensor)
        from torchvision.models.detection.image_list import ImageList as TVImageList

        tv_list = TVImageList(batch.tensor, batch.image_sizes)
        torch.manual_seed(42)
        ref_props, ref_losses = reference.rpn(tv_list, features, targets)
        torch.manual_seed(42)
        rpn_out = ours.rpn(
            ImageList(batch.tensor, batch.image_sizes),
            list(features.values()),
            params=ours.rpn.train_params,
        )
        props = rpn_out.proposals
        losses = ours.rpn.losses(rpn_out, [t["boxes"] for t in targets])
    assert set(losses) == set(ref_losses)
    for name, value in ref_losses.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-6)
    assert [len(p) for p in props] == [len(p) for p in ref_props]


def test_roi_head_training_losses_match_torchvision(training_pair):
    reference, ours, images, targets = training_pair
    reference.roi_heads.train()
    ours.roi_heads.train()
    with torch.no_grad():
        batch = ours.preprocessor(images, resize=False)
        features = reference.backbone(batch.tensor)
        level_maps = [features[k] for k in ["0", "1", "2", "3"]]
        gen = torch.Generator().manual_seed(9)
        proposals = []
        for h, w in batch.image_sizes:
            xy = torch.rand(300, 2, generator=gen) * torch.tensor([w - 40.0, h - 40.0])
            proposals.append(torch.cat([xy, xy + 8 + torch.rand(300, 2, generator=gen) * 150], 1))
        torch.manual_seed(7)
        _, ref_losses = reference.roi_heads(
            features, [p.clone() for p in proposals], batch.image_sizes, targets
        )
        gt = [
            Instances(image_size=s, boxes=t["boxes"], labels=t["labels"], masks=t["masks"])
            for s, t in zip(batch.image_sizes, targets)
        ]
        torch.manual_seed(7)
        losses = ours.roi_heads.losses(level_maps, proposals, gt)
    assert set(losses) == set(ref_losses)
    for name, value in ref_losses.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-4, atol=1e-5)


def test_model_training_forward_gives_finite_losses_and_gradients(training_pair):
    _, ours, images, targets = training_pair
    ours.train()
    try:
        losses = ours(images, targets)
        total = sum(losses.values())
        total.backward()
        grad = ours.roi_heads.mask_head.predictor.weight.grad.clone()
        backbone_grad = ours.backbone.bottom_up.res3[0].conv1.conv.weight.grad.clone()
    finally:
        ours.eval()
        ours.zero_grad(set_to_none=True)
    assert set(losses) == {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
    }
    assert all(torch.isfinite(v) for v in losses.values())
    assert grad.abs().sum() > 0 and backbone_grad.abs().sum() > 0
