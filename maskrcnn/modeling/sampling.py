"""Training targets: match predictions to ground truth, then sample a balanced minibatch.

Pure functions. ``match_boxes`` assigns each anchor or proposal the ground-truth box it
overlaps most and labels it foreground, background or ignored by IoU thresholds
(:class:`Matches`); ``sample_balanced`` picks at most ``batch_size`` of them with at most
``positive_fraction`` foreground. The RPN uses 0.7 / 0.3 with low-quality matches kept (so
every ground-truth box gets an anchor); the RoI heads use 0.5 / 0.5 after appending the
ground-truth boxes to the proposals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from maskrcnn.ops.boxes import encode_boxes

# Match labels. The values double as the RPN's objectness targets (1 object, 0 background)
# and "ignored" (-1) is never sampled.
FOREGROUND = 1  # IoU at or above the high threshold (or a kept low-quality match)
BACKGROUND = 0  # IoU below the low threshold (or no ground truth at all)
IGNORED = -1  # IoU between the thresholds


@dataclass(frozen=True)
class Matches:
    """Which ground-truth box each prediction matches, and how well.

    Attributes:
        indices: [N] int64 index of the matched ground-truth box; meaningful only where
            ``labels == FOREGROUND`` (0 elsewhere).
        labels: [N] int8 ``FOREGROUND``, ``BACKGROUND`` or ``IGNORED``.
    """

    indices: Tensor
    labels: Tensor

    @property
    def foreground(self) -> Tensor:
        """[N] bool: where a prediction is matched."""
        return self.labels == FOREGROUND


def match_boxes(iou: Tensor, *, high: float, low: float, allow_low_quality: bool) -> Matches:
    """Matches predictions (columns) to ground truth (rows).

    Args:
        iou: [G, N] IoU of each ground-truth box with each prediction (G may be 0: then
            everything is background).
        high: IoU at or above which a prediction is foreground.
        low: IoU below which a prediction is background (in between: ignored).
        allow_low_quality: also make foreground, for each ground-truth box, the predictions
            that overlap it best (even below ``high``; every one of a tie), matched to their
            own best ground truth.

    Returns:
        The :class:`Matches` of the N predictions.
    """
    num_gt, num_predictions = iou.shape
    if num_gt == 0:
        indices = torch.zeros(num_predictions, dtype=torch.int64, device=iou.device)
        labels = torch.full((num_predictions,), BACKGROUND, dtype=torch.int8, device=iou.device)
        return Matches(indices=indices, labels=labels)
    best_iou, indices = iou.max(dim=0)  # [N]
    labels = torch.full((num_predictions,), FOREGROUND, dtype=torch.int8, device=iou.device)
    labels[best_iou < low] = BACKGROUND
    labels[(best_iou >= low) & (best_iou < high)] = IGNORED
    if allow_low_quality:
        best_per_gt = iou.max(dim=1).values  # [G]
        _, keep = torch.where(iou == best_per_gt[:, None])
        labels[keep] = FOREGROUND
    indices = torch.where(labels == FOREGROUND, indices, 0)
    return Matches(indices=indices, labels=labels)


def sample_balanced(
    labels: Tensor, *, batch_size: int, positive_fraction: float
) -> tuple[Tensor, Tensor]:
    """Random foreground and background indices for one image.

    Args:
        labels: [N] match labels (``FOREGROUND``, ``BACKGROUND``, ``IGNORED``), any dtype.

    Returns:
        (foreground indices, background indices), at most ``batch_size`` in all.
    """
    positive = torch.where(labels == FOREGROUND)[0]
    negative = torch.where(labels == BACKGROUND)[0]
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
        Match labels [M] int8 (``FOREGROUND``, ``BACKGROUND``, ``IGNORED``) and the matched
        ground-truth boxes [M, 4] (the first box where a label is not foreground; zeros
        without ground truth).
    """
    matches = match_boxes(box_iou(gt_boxes, anchors), high=high, low=low, allow_low_quality=True)
    if gt_boxes.numel() == 0:
        return matches.labels, torch.zeros_like(anchors)
    return matches.labels, gt_boxes[matches.indices]


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
    matches = match_boxes(
        box_iou(gt_boxes, proposals), high=fg_iou, low=bg_iou, allow_low_quality=False
    )
    fg, bg = sample_balanced(
        matches.labels, batch_size=batch_size, positive_fraction=positive_fraction
    )
    keep = torch.cat([fg, bg])
    sampled = proposals[keep]
    matched_gt = matches.indices[keep]
    labels = torch.zeros_like(matched_gt)
    labels[: fg.numel()] = gt_labels[matched_gt[: fg.numel()]].to(torch.int64)
    if gt_boxes.numel() == 0:
        targets = torch.zeros_like(sampled)
    else:
        targets = encode_boxes(gt_boxes[matched_gt], sampled, box_coder_weights)
    return RoITargets(
        proposals=sampled, labels=labels, regression_targets=targets, matched_gt=matched_gt
    )
