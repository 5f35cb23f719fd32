"""The Mask R-CNN losses, as pure functions of predictions and targets.

L = L_rpn_cls + L_rpn_box + L_cls + L_box + L_mask. In the torchvision-compatible
configuration each function equals torchvision's on identical inputs (``fastrcnn_loss``,
``maskrcnn_loss`` and the RPN's ``compute_loss``); ``smooth_l1_beta = 0`` gives detectron2's
L1 box loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from maskrcnn.config import MaskLossKind


def smooth_l1(input: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth-L1 (Huber with slope 1); plain L1 when ``beta`` is 0."""
    if beta < 1e-5:
        return (input - target).abs().sum()
    return F.smooth_l1_loss(input, target, beta=beta, reduction="sum")


def rpn_losses(
    objectness: Tensor,
    deltas: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    sampled_pos: Tensor,
    sampled_neg: Tensor,
    *,
    smooth_l1_beta: float,
) -> dict[str, Tensor]:
    """Objectness (binary cross-entropy) and box regression of the sampled anchors.

    Args:
        objectness: [A] logits of all anchors of the batch.
        deltas: [A, 4] predicted deltas.
        labels: [A] 1 object, 0 background, -1 ignored.
        regression_targets: [A, 4] deltas towards each anchor's matched box.
        sampled_pos / sampled_neg: indices into the A anchors.

    Returns:
        ``loss_objectness`` (mean over sampled anchors) and ``loss_rpn_box_reg`` (sum over
        sampled positives / number sampled).
    """
    sampled = torch.cat([sampled_pos, sampled_neg])
    num = max(sampled.numel(), 1)
    box_loss = smooth_l1(deltas[sampled_pos], regression_targets[sampled_pos], smooth_l1_beta)
    if sampled.numel() == 0:
        cls_loss = objectness.sum() * 0.0
    else:
        cls_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
    return {"loss_objectness": cls_loss, "loss_rpn_box_reg": box_loss / num}


def fast_rcnn_losses(
    class_logits: Tensor,
    box_deltas: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    *,
    smooth_l1_beta: float,
) -> dict[str, Tensor]:
    """Classification and class-specific box regression of sampled RoIs.

    Args:
        class_logits: [R, N] (background = 0).
        box_deltas: [R, 4N].
        labels: [R] int64 class of each RoI.
        regression_targets: [R, 4].

    Returns:
        ``loss_classifier`` (cross-entropy, mean) and ``loss_box_reg`` (smooth-L1 on the true
        class's deltas of foreground RoIs, summed, divided by R).
    """
    cls_loss = F.cross_entropy(class_logits, labels)
    fg = torch.where(labels > 0)[0]
    deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[fg, labels[fg]]  # [F, 4]
    box_loss = smooth_l1(deltas, regression_targets[fg], smooth_l1_beta)
    return {"loss_classifier": cls_loss, "loss_box_reg": box_loss / max(labels.numel(), 1)}


def mask_loss(
    mask_logits: Tensor, labels: Tensor, mask_targets: Tensor, *, kind: MaskLossKind = "sigmoid"
) -> Tensor:
    """The mask loss on foreground RoIs.

    Args:
        mask_logits: [F, M, S, S]; M = number of classes, or 1 for class-agnostic masks.
        labels: [F] int64 ground-truth class of each RoI (>= 1).
        mask_targets: [F, S, S] targets in [0, 1] cut from the ground-truth masks.
        kind: "sigmoid": per-pixel binary cross-entropy on the ground-truth class's mask only
            (the paper's decoupled loss); "softmax": per-pixel multinomial cross-entropy over
            classes, background where the target is below 0.5 (the paper's Table 2b baseline).

    Returns:
        Scalar loss (zero, but connected to the graph, without foreground RoIs).
    """
    if mask_targets.numel() == 0:
        return mask_logits.sum() * 0.0
    if kind == "softmax":
        target_class = torch.where(mask_targets >= 0.5, labels[:, None, None], 0)
        return F.cross_entropy(mask_logits, target_class)
    if kind != "sigmoid":
        raise ValueError(f"mask loss kind must be 'sigmoid' or 'softmax', got {kind!r}")
    channel = labels if mask_logits.shape[1] > 1 else torch.zeros_like(labels)
    index = torch.arange(labels.shape[0], device=labels.device)
    return F.binary_cross_entropy_with_logits(mask_logits[index, channel], mask_targets)
