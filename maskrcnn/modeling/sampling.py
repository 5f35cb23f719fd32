"""Training targets: match predictions to ground truth, then sample a balanced minibatch.

Pure functions. ``match_boxes`` assigns each anchor or proposal the ground-truth box it
overlaps most, or marks it background / ignored by IoU thresholds; ``sample_balanced`` picks
at most ``batch_size`` of them with at most ``positive_fraction`` foreground. The RPN uses
0.7 / 0.3 with low-quality matches kept (so every ground-truth box gets an anchor); the RoI
heads use 0.5 / 0.5 after appending the ground-truth boxes to the proposals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from maskrcnn.ops.boxes import encode_boxes

BACKGROUND = -1  # match index of a prediction below the low threshold
IGNORED = -2  # match index of a prediction between the thresholds


def match_boxes(iou: Tensor, *, high: float, low: float, allow_low_quality: bool) -> Tensor:
    """Matches predictions (columns) to ground truth (rows).

    Args:
        iou: [G, N] IoU of each ground-truth box with each prediction (G >= 1).
        high: IoU at or above which a prediction is foreground.
        low: IoU below which a prediction is background.
        allow_low_quality: also keep, for each ground-truth box, the predictions that overlap
            it best (even below ``high``), matched to their own best ground truth.

    Returns:
        [N] int64: the matched ground-truth index, ``BACKGROUND`` or ``IGNORED``.
    """
    best_iou, matches = iou.max(dim=0)  # [N]
    original = matches.clone() if allow_low_quality else None
    matches[best_iou < low] = BACKGROUND
    matches[(best_iou >= low) & (best_iou < high)] = IGNORED
    if original is not None:
        best_per_gt = iou.max(dim=1).values  # [G]
        _, keep = torch.where(iou == best_per_gt[:, None])
        matches[keep] = original[keep]
    return matches


def sample_balanced(
    labels: Tensor, *, batch_size: int, positive_fraction: float
) -> tuple[Tensor, Tensor]:
    """Random foreground and background indices for one image.

    Args:
        labels: [N] int64; >= 1 foreground, 0 background, -1 ignored.

    Returns:
        (foreground indices, background indices), at most ``batch_size`` in all.
    """
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    pos_pick = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    neg_pick = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    return positive[pos_pick], negative[neg_pick]


def label_anchors(
    anchors: Tensor, gt_boxes: Tensor, *, high: float, low: float
) -> tuple[Tensor, Tensor]:
    """RPN targets of one image.

    Args:
        anchors: [M, 4] xyxy.
        gt_boxes: [G, 4] xyxy (G may be 0).

    Returns:
        labels [M] float (1 object, 0 background, -1 ignored) and the matched ground-truth
        boxes [M, 4] (zeros where there is none).
    """
    if gt_boxes.numel() == 0:
        return anchors.new_zeros(anchors.shape[0]), torch.zeros_like(anchors)
    matches = match_boxes(box_iou(gt_boxes, anchors), high=high, low=low, allow_low_quality=True)
    matched_boxes = gt_boxes[matches.clamp(min=0)]
    labels = (matches >= 0).to(anchors.dtype)
    labels[matches == BACKGROUND] = 0.0
    labels[matches == IGNORED] = -1.0
    return labels, matched_boxes


@dataclass
class RoITargets:
    """Sampled proposals of one image and what they should predict.

    Attributes:
        proposals: [S, 4] xyxy, foreground first.
        labels: [S] int64 class (0 = background).
        regression_targets: [S, 4] box deltas towards the matched ground truth.
        matched_gt: [S] int64 index of the matched ground-truth instance (0 for background).
    """

    proposals: Tensor
    labels: Tensor
    regression_targets: Tensor
    matched_gt: Tensor

    @property
    def num_foreground(self) -> int:
        return int((self.labels > 0).sum())


def label_proposals(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    fg_iou: float,
    bg_iou: float,
    batch_size: int,
    positive_fraction: float,
    box_coder_weights: tuple[float, float, float, float],
) -> RoITargets:
    """RoI-head targets of one image: add ground truth, match, sample, encode.

    Args:
        proposals: [P, 4] xyxy from the RPN.
        gt_boxes: [G, 4] xyxy; gt_labels: [G] int64 >= 1.
    """
    proposals = torch.cat([proposals, gt_boxes.to(proposals.dtype)])
    if gt_boxes.numel() == 0:
        matches = torch.full((proposals.shape[0],), BACKGROUND, dtype=torch.int64)
        matches = matches.to(proposals.device)
    else:
        iou = box_iou(gt_boxes, proposals)
        matches = match_boxes(iou, high=fg_iou, low=bg_iou, allow_low_quality=False)
    matched_gt = matches.clamp(min=0)
    if gt_labels.numel() > 0:
        labels = gt_labels[matched_gt].to(torch.int64)
    else:
        labels = torch.zeros_like(matches)
    labels[matches == BACKGROUND] = 0
    labels[matches == IGNORED] = -1
    fg, bg = sample_balanced(labels, batch_size=batch_size, positive_fraction=positive_fraction)
    keep = torch.cat([fg, bg])
    sampled = proposals[keep]
    if gt_boxes.numel() == 0:
        targets = torch.zeros_like(sampled)
    else:
        targets = encode_boxes(gt_boxes[matched_gt[keep]], sampled, box_coder_weights)
    return RoITargets(
        proposals=sampled,
        labels=labels[keep],
        regression_targets=targets,
        matched_gt=matched_gt[keep],
    )
