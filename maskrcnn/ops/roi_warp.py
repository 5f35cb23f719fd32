"""RoIWarp: RoIPool's quantised RoI, sampled bilinearly and averaged (or maxed) like RoIAlign.

The Mask R-CNN paper's Table 2c compares RoIPool, RoIWarp and RoIAlign. RoIWarp (from the
MNC paper) warps the RoI to the output size with bilinear interpolation, but, like RoIPool,
only after snapping the RoI to the feature grid. This module's exact definition, for an RoI
``(b, x1, y1, x2, y2)`` and scale ``s``:

1. Quantise as torchvision's RoIPool does (C ``round``, halves away from zero)::

       xs = round(x1*s); ys = round(y1*s); xe = round(x2*s); ye = round(y2*s)
       roi_w = max(xe - xs + 1, 1); roi_h = max(ye - ys + 1, 1)

   so the RoI covers the integer cells ``xs..xe`` (inclusive), as RoIPool's bins do.
2. Sample exactly as ``roi_align(..., aligned=False)`` would a RoI starting at ``(xs, ys)``
   (feature-map coordinates) of size ``roi_w x roi_h``: ``PH x PW`` bins, ``gh x gw`` samples
   per bin (``sampling_ratio``, or ``ceil(roi_h / PH)`` when ``sampling_ratio <= 0``), bilinear
   values with RoIAlign's border rules, averaged per bin (``reduction="avg"``) or their
   maximum taken (``reduction="max"``, the paper's "RoIWarp max" of Table 2c).

Consequently, for boxes whose scaled corners are integers, ``roi_warp(x, box, ...)`` equals
``roi_align(x, box + (0, 0, 1/s, 1/s), ..., aligned=False)`` (the +1 cell of the inclusive end).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from maskrcnn.ops._roi_args import (
    BoxesLike,
    boxes_to_rois,
    check_input,
    empty_output,
    pair_output_size,
    round_half_away,
)
from maskrcnn.ops.roi_align import REDUCTIONS, align_features


def quantize_rois(rois: Tensor, spatial_scale: float) -> tuple[Tensor, Tensor]:
    """RoIPool's grid snapping.

    Args:
        rois: [K, 5] (batch index, x1, y1, x2, y2), geometry dtype.
        spatial_scale: box -> feature-map scale.

    Returns:
        ``start`` [K, 2] (xs, ys) and ``extent`` [K, 2] (roi_w, roi_h), integer-valued floats.
    """
    corners = round_half_away(rois[:, 1:5] * spatial_scale)  # [K, 4] xs, ys, xe, ye
    start = corners[:, 0:2]
    extent = (corners[:, 2:4] - start + 1).clamp(min=1)
    return start, extent


def roi_warp(
    input: Tensor,
    boxes: BoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    reduction: str = "avg",
) -> Tensor:
    """RoIWarp: bilinear pooling of the grid-quantised RoI (see the module docstring).

    Args:
        input: [N, C, H, W] features, any floating dtype (fp16/bf16 are computed in fp32).
        boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L_i, 4].
        output_size: int or (PH, PW).
        spatial_scale: factor mapping box coordinates to feature-map coordinates.
        sampling_ratio: sample points per bin and axis; <= 0 for ``ceil(roi_size / bins)``.
        reduction: "avg" (mean of a bin's samples) or "max" (their maximum).

    Returns:
        [K, C, PH, PW], dtype of ``input``. Differentiable with respect to ``input`` only.

    Raises:
        ValueError: on a bad ``input``, ``boxes``, ``output_size`` or ``reduction``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    check_input(input)
    size = pair_output_size(output_size)
    rois = boxes_to_rois(boxes, input)  # [K, 5]
    if rois.shape[0] == 0:
        return empty_output(input, size)
    start, extent = quantize_rois(rois, spatial_scale)
    batch = rois[:, 0].to(torch.int64)
    return align_features(input, batch, start, extent, size, sampling_ratio, reduction)


class RoIWarp(nn.Module):
    """Module form of :func:`roi_warp` (same arguments, stored at construction)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        reduction: str = "avg",
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
        self.output_size = pair_output_size(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.reduction = reduction

    def forward(self, input: Tensor, boxes: BoxesLike) -> Tensor:
        """input [N, C, H, W], boxes [K, 5] or list of [L_i, 4] -> [K, C, PH, PW]."""
        return roi_warp(
            input,
            boxes,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, reduction={self.reduction!r}"
        )
