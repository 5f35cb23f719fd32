"""Box math as pure functions: the R-CNN box parametrisation (encode/decode).

Boxes are xyxy in pixels, width = x2 - x1 (no "+1"). Deltas are (dx, dy, dw, dh) scaled by
per-coordinate weights: (1, 1, 1, 1) for the RPN and (10, 10, 5, 5) for the box head. Clipping,
small-box removal, IoU and NMS come from torchvision.ops.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# exp(dw) is clamped so that a box grows at most 1000/16 times its anchor or proposal.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def encode_boxes(
    target_boxes: Tensor, reference_boxes: Tensor, weights: tuple[float, float, float, float]
) -> Tensor:
    """Regression targets that turn ``reference_boxes`` into ``target_boxes``.

    Args:
        target_boxes: [N, 4] xyxy, e.g. matched ground truth.
        reference_boxes: [N, 4] xyxy, e.g. anchors or proposals.
        weights: (wx, wy, ww, wh) multipliers of the deltas.

    Returns:
        [N, 4] deltas (dx, dy, dw, dh).
    """
    wx, wy, ww, wh = weights
    ref_w = reference_boxes[:, 2] - reference_boxes[:, 0]
    ref_h = reference_boxes[:, 3] - reference_boxes[:, 1]
    ref_cx = reference_boxes[:, 0] + 0.5 * ref_w
    ref_cy = reference_boxes[:, 1] + 0.5 * ref_h
    tgt_w = target_boxes[:, 2] - target_boxes[:, 0]
    tgt_h = target_boxes[:, 3] - target_boxes[:, 1]
    tgt_cx = target_boxes[:, 0] + 0.5 * tgt_w
    tgt_cy = target_boxes[:, 1] + 0.5 * tgt_h
    dx = wx * (tgt_cx - ref_cx) / ref_w
    dy = wy * (tgt_cy - ref_cy) / ref_h
    dw = ww * torch.log(tgt_w / ref_w)
    dh = wh * torch.log(tgt_h / ref_h)
    return torch.stack((dx, dy, dw, dh), dim=1)


def decode_boxes(
    deltas: Tensor,
    reference_boxes: Tensor,
    weights: tuple[float, float, float, float],
    *,
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> Tensor:
    """Applies deltas to reference boxes.

    Args:
        deltas: [N, 4 * K] deltas, K boxes per reference (K = 1 for the RPN, the number of
            classes for the box head).
        reference_boxes: [N, 4] xyxy anchors or proposals.
        weights: (wx, wy, ww, wh) the deltas were scaled by.
        scale_clamp: upper bound on dw and dh before exp.

    Returns:
        [N, K, 4] xyxy boxes, in the dtype of ``deltas``.
    """
    reference_boxes = reference_boxes.to(deltas.dtype)
    wx, wy, ww, wh = weights
    ref_w = reference_boxes[:, 2] - reference_boxes[:, 0]
    ref_h = reference_boxes[:, 3] - reference_boxes[:, 1]
    ref_cx = reference_boxes[:, 0] + 0.5 * ref_w
    ref_cy = reference_boxes[:, 1] + 0.5 * ref_h

    deltas = deltas.reshape(deltas.shape[0], deltas.shape[1] // 4, 4)  # [N, K, 4]
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=scale_clamp)
    dh = (deltas[..., 3] / wh).clamp(max=scale_clamp)

    cx = dx * ref_w[:, None] + ref_cx[:, None]
    cy = dy * ref_h[:, None] + ref_cy[:, None]
    half_w = 0.5 * (torch.exp(dw) * ref_w[:, None])
    half_h = 0.5 * (torch.exp(dh) * ref_h[:, None])
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2)


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Maps [N, 4] xyxy boxes from an image of ``from_size`` (h, w) to one of ``to_size``.

    The ratios are computed in float32, as torchvision's ``resize_boxes`` does.
    """
    ratio_h = torch.tensor(to_size[0], dtype=torch.float32) / torch.tensor(
        from_size[0], dtype=torch.float32
    )
    ratio_w = torch.tensor(to_size[1], dtype=torch.float32) / torch.tensor(
        from_size[1], dtype=torch.float32
    )
    scale = torch.stack((ratio_w, ratio_h, ratio_w, ratio_h)).to(boxes)
    return boxes * scale
