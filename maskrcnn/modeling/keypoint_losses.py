"""The keypoint loss (paper section 5), a pure function of heatmap logits and targets.

Each visible ground-truth keypoint inside a positive RoI is quantised to one cell of the
S x S (56 x 56) heatmap grid; the loss is the cross-entropy of the S*S-way softmax over each
heatmap, averaged over the valid (visible, inside the RoI) keypoints. With torchvision's
layout it equals ``keypointrcnn_loss`` on identical inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def keypoint_heatmap_targets(keypoints: Tensor, rois: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Ground-truth keypoints -> the index of their cell in each RoI's S x S heatmap.

    A keypoint at (x, y) lands in cell ``(floor((x - x0) * S / w), floor((y - y0) * S / h))``;
    one exactly on the RoI's right (bottom) edge goes to the last column (row).

    Args:
        keypoints: [R, K, 3] (x, y, v) of each RoI's matched ground truth, network frame.
        rois: [R, 4] xyxy RoIs.
        size: S, the heatmap side.

    Returns:
        ``targets`` [R, K] int64 flat cell indices ``y * S + x`` (0 where not valid) and
        ``valid`` [R, K] bool: visible (v > 0) and inside the RoI.
    """
    x0, y0 = rois[:, 0:1], rois[:, 1:2]
    scale_x = size / (rois[:, 2:3] - x0)
    scale_y = size / (rois[:, 3:4] - y0)
    x, y = keypoints[..., 0], keypoints[..., 1]
    on_right = x == rois[:, 2:3]
    on_bottom = y == rois[:, 3:4]
    cx = ((x - x0) * scale_x).floor().long()
    cy = ((y - y0) * scale_y).floor().long()
    cx = torch.where(on_right, size - 1, cx)
    cy = torch.where(on_bottom, size - 1, cy)
    inside = (cx >= 0) & (cy >= 0) & (cx < size) & (cy < size)
    valid = inside & (keypoints[..., 2] > 0)
    targets = torch.where(valid, cy * size + cx, torch.zeros_like(cx))
    return targets, valid


def keypoint_loss(keypoint_logits: Tensor, rois: Tensor, keypoints: Tensor) -> Tensor:
    """Cross-entropy over each heatmap's pixels, averaged over valid keypoints.

    Args:
        keypoint_logits: [R, K, S, S] heatmap logits of the positive RoIs.
        rois: [R, 4] xyxy RoIs (network frame).
        keypoints: [R, K, 3] (x, y, v) of each RoI's matched ground-truth instance.

    Returns:
        Scalar loss; zero (connected to the graph) without a valid keypoint.
    """
    num_rois, num_keypoints, height, width = keypoint_logits.shape
    if height != width:
        raise ValueError(f"keypoint heatmaps must be square, got {height}x{width}")
    if keypoints.shape[:2] != (num_rois, num_keypoints):
        raise ValueError(
            f"keypoints {tuple(keypoints.shape)} do not match heatmaps "
            f"{tuple(keypoint_logits.shape)}: expected [{num_rois}, {num_keypoints}, 3]"
        )
    targets, valid = keypoint_heatmap_targets(keypoints, rois, height)
    if not bool(valid.any()):
        return keypoint_logits.sum() * 0.0
    logits = keypoint_logits.reshape(num_rois * num_keypoints, height * width)
    flat_valid = valid.reshape(-1)
    return F.cross_entropy(logits[flat_valid], targets.reshape(-1)[flat_valid])
