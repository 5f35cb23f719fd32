"""Pasting RoI-frame masks (e.g. 28x28) into the image: two methods, as pure functions.

``paste_masks_grid_sample`` (our default) samples each mask at every image pixel centre that
falls inside its box, at exact floating-point coordinates (detectron2's method): no rounding
of the box, no "+1". ``paste_masks_torchvision`` reproduces torchvision's quantised paste for
parity with its models: the mask is padded by one pixel, the box is enlarged to match and
truncated to integers, and the mask is resized to ``(y2 - y1 + 1, x2 - x1 + 1)`` pixels.
Both return soft masks; thresholding is the caller's. Each box only touches its own window of
the image, so the cost follows the boxes' areas, not N x H x W.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

PasteFn = Callable[[Tensor, Tensor, tuple[int, int]], Tensor]


def _check(masks: Tensor, boxes: Tensor) -> None:
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks: expected [N, 1, M, M], got {tuple(masks.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != masks.shape[0]:
        raise ValueError(f"boxes: expected [{masks.shape[0]}, 4], got {tuple(boxes.shape)}")


def paste_masks_grid_sample(masks: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Pastes masks at exact box coordinates by bilinear sampling at pixel centres.

    Pixel (x, y) of the image has centre (x + 0.5, y + 0.5); it reads the mask at the
    normalised position of that centre within the box. Pixels outside the box read zero.

    Args:
        masks: [N, 1, M, M] soft masks in the boxes' frames.
        boxes: [N, 4] xyxy in image pixels.
        image_size: (H, W) of the image.

    Returns:
        [N, 1, H, W] soft masks in the dtype of ``masks``.
    """
    _check(masks, boxes)
    height, width = image_size
    out = masks.new_zeros((masks.shape[0], 1, height, width))
    boxes_cpu = boxes.detach().to("cpu", torch.float64)
    for i, (x0, y0, x1, y1) in enumerate(boxes_cpu.tolist()):
        # Window of pixels whose centres may fall inside the box.
        left, top = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
        right, bottom = min(int(math.ceil(x1)) + 1, width), min(int(math.ceil(y1)) + 1, height)
        if right <= left or bottom <= top or x1 <= x0 or y1 <= y0:
            continue
        xs = torch.arange(left, right, device=masks.device, dtype=torch.float32) + 0.5
        ys = torch.arange(top, bottom, device=masks.device, dtype=torch.float32) + 0.5
        gx = (xs - x0) / (x1 - x0) * 2 - 1  # [w]
        gy = (ys - y0) / (y1 - y0) * 2 - 1  # [h]
        grid = torch.stack(
            (gx[None, :].expand(len(gy), -1), gy[:, None].expand(-1, len(gx))), dim=-1
        )  # [h, w, 2]
        sampled = F.grid_sample(
            masks[i : i + 1].float(), grid[None], mode="bilinear", align_corners=False
        )  # [1, 1, h, w]
        out[i, 0, top:bottom, left:right] = sampled[0, 0].to(out.dtype)
    return out


def paste_masks_torchvision(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], *, padding: int = 1
) -> Tensor:
    """torchvision's paste: pad, enlarge, truncate the box to integers, resize, copy.

    Args:
        masks: [N, 1, M, M] soft masks in the boxes' frames.
        boxes: [N, 4] xyxy in image pixels.
        image_size: (H, W) of the image.
        padding: pixels of zero padding around each mask before resizing.

    Returns:
        [N, 1, H, W] soft masks in the dtype of ``masks``.
    """
    _check(masks, boxes)
    height, width = image_size
    m = masks.shape[-1]
    scale = float(m + 2 * padding) / m
    padded = F.pad(masks, (padding,) * 4)
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    center_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    center_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    int_boxes = torch.stack(
        (center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h), dim=1
    ).to(torch.int64)  # truncation toward zero, as torchvision's cast
    out = masks.new_zeros((masks.shape[0], 1, height, width))
    for i, (x0, y0, x1, y1) in enumerate(int_boxes.tolist()):
        box_w, box_h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        resized = F.interpolate(
            padded[i : i + 1], size=(box_h, box_w), mode="bilinear", align_corners=False
        )[0, 0]
        left, right = max(x0, 0), min(x1 + 1, width)
        top, bottom = max(y0, 0), min(y1 + 1, height)
        if right <= left or bottom <= top:
            continue
        out[i, 0, top:bottom, left:right] = resized[top - y0 : bottom - y0, left - x0 : right - x0]
    return out


def paste_function(method: str) -> PasteFn:
    """The paste named by ``cfg.mask_head.paste`` (``"grid_sample"`` or ``"torchvision"``)."""
    if method == "grid_sample":
        return paste_masks_grid_sample
    if method == "torchvision":
        return paste_masks_torchvision
    raise ValueError(f"mask_head.paste: expected 'grid_sample' or 'torchvision', got {method!r}")
