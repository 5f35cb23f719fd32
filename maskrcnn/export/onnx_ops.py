"""The data-dependent steps of inference as ops that run in PyTorch and export to standard ONNX.

Each op is a ``torch.autograd.Function`` whose ``forward`` is the eager computation (the same
functions the model uses) and whose ``symbolic`` writes standard ONNX nodes for the
TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): ``RoiAlign``,
``NonMaxSuppression``, ``TopK``, ``Resize`` and ``Pad`` with sizes computed in the graph from
its inputs' shapes, so that nothing is sized by the example image, and every op accepts zero
boxes. Shapes are read with :func:`shape_of`, which the tracer records as ``Shape`` nodes.

``RoiAlign``'s ``coordinate_transformation_mode`` needs opset 16 (see ``OPSET``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from maskrcnn.ops import roi_align

# The opset of the exported graphs: 16 is the first with RoiAlign's half_pixel mode (aligned
# RoIAlign); 17 is the oldest opset that current runtimes and the exporter both cover fully.
OPSET = 17


def shape_of(x: Tensor) -> Tensor:
    """[x.dim()] int64 shape of ``x``, as a tensor (an ONNX ``Shape`` node when exported)."""
    return torch._shape_as_tensor(x)


def arange_float(n: Tensor) -> Tensor:
    """[n] float32 ``0, 1, ..., n - 1`` for a 0-dim int64 ``n`` (an ONNX ``Range`` node)."""
    return torch.arange(n, dtype=torch.float32)  # type: ignore[call-overload]  # n is a Tensor


def _const(g: Any, value: Any, dtype: torch.dtype) -> Any:
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


def _dim(g: Any, x: Any, axis: int) -> Any:
    """[1] int64: the size of ``x`` along ``axis`` (an ONNX graph value)."""
    return g.op("Gather", g.op("Shape", x), _const(g, [axis], torch.int64), axis_i=0)


class _RoIAlign(torch.autograd.Function):
    """RoIAlign (average) of one image's feature map: ONNX ``RoiAlign``."""

    @staticmethod
    def forward(
        ctx: Any,
        features: Tensor,
        boxes: Tensor,
        output_size: int,
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
    ) -> Tensor:
        rois = torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes], dim=1)
        return roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    def symbolic(
        g: Any,
        features: Any,
        boxes: Any,
        output_size: int,
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
    ) -> Any:
        # Every RoI reads image 0: batch indices are zeros shaped like the boxes' first axis.
        batch_indices = g.op(
            "ConstantOfShape", _dim(g, boxes, 0), value_t=torch.tensor([0], dtype=torch.int64)
        )
        return g.op(
            "RoiAlign",
            features,
            boxes,
            batch_indices,
            output_height_i=output_size,
            output_width_i=output_size,
            sampling_ratio_i=max(sampling_ratio, 0),
            spatial_scale_f=spatial_scale,
            mode_s="avg",
            coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel",
        )


def roi_align_single(
    features: Tensor,
    boxes: Tensor,
    *,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoIAlign of boxes on one image's features.

    Args:
        features: [1, C, H, W].
        boxes: [K, 4] xyxy in input pixels (K may be 0).
        output_size: S, the pooled side.
        spatial_scale: feature pixels per input pixel.
        sampling_ratio: samples per bin and axis, <= 0 for adaptive.
        aligned: half-pixel offset (ONNX ``half_pixel``; False is ``output_half_pixel``).

    Returns:
        [K, C, S, S].
    """
    return _RoIAlign.apply(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)


class _BatchedNMS(torch.autograd.Function):
    """NMS within each class: ONNX ``NonMaxSuppression`` with one score row per class."""

    @staticmethod
    def forward(
        ctx: Any,
        boxes: Tensor,
        scores: Tensor,
        classes: Tensor,
        num_classes: int,
        iou_threshold: float,
        max_per_class: int,
    ) -> Tensor:
        return batched_nms(boxes, scores, classes, iou_threshold)

    @staticmethod
    def symbolic(
        g: Any,
        boxes: Any,
        scores: Any,
        classes: Any,
        num_classes: int,
        iou_threshold: float,
        max_per_class: int,
    ) -> Any:
        zero = _const(g, [0], torch.int64)
        # scores [N] -> [1, num_classes, N]: a box's score in its class row, -1 elsewhere, and
        # the score threshold (-0.5) drops the -1s before suppression.
        class_ids = g.op(
            "Unsqueeze",
            g.op(
                "Range",
                _const(g, 0, torch.int64),
                _const(g, num_classes, torch.int64),
                _const(g, 1, torch.int64),
            ),
            _const(g, [1], torch.int64),
        )  # [C, 1]
        in_class = g.op("Equal", g.op("Unsqueeze", classes, zero), class_ids)  # [C, N]
        class_scores = g.op(
            "Where", in_class, g.op("Unsqueeze", scores, zero), _const(g, -1.0, torch.float32)
        )
        selected = g.op(
            "NonMaxSuppression",
            g.op("Unsqueeze", boxes, zero),  # [1, N, 4]
            g.op("Unsqueeze", class_scores, zero),  # [1, C, N]
            _const(g, [max_per_class], torch.int64),
            _const(g, [iou_threshold], torch.float32),
            _const(g, [-0.5], torch.float32),
        )  # [K, 3]: (batch, class, box)
        keep = g.op(
            "Squeeze",
            g.op("Gather", selected, _const(g, [2], torch.int64), axis_i=1),
            _const(g, [1], torch.int64),
        )  # [K], grouped by class
        # All classes together, best score first (what batched_nms returns).
        kept_scores = g.op("Gather", scores, keep, axis_i=0)
        _, order = g.op(
            "TopK",
            kept_scores,
            _dim(g, kept_scores, 0),
            axis_i=0,
            largest_i=1,
            sorted_i=1,
            outputs=2,
        )
        return g.op("Gather", keep, order, axis_i=0)


def batched_nms_onnx(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    *,
    num_classes: int,
    iou_threshold: float,
    max_per_class: int,
) -> Tensor:
    """Indices of the boxes that NMS within each class keeps, best score first.

    Args:
        boxes: [N, 4] xyxy (N may be 0).
        scores: [N] in [0, 1].
        classes: [N] int64 in [0, num_classes).
        num_classes: number of classes (rows of the ONNX score tensor).
        iou_threshold: a box is dropped when its IoU with a better box of its class is above it.
        max_per_class: the exported graph keeps at most this many per class; pass the number
            the caller keeps in all, so that the result after slicing is unchanged.

    Returns:
        [K] int64 indices into ``boxes``, by decreasing score.
    """
    return _BatchedNMS.apply(boxes, scores, classes, num_classes, iou_threshold, max_per_class)


class _TopK(torch.autograd.Function):
    """The ``min(k, N)`` largest entries of a vector: ONNX ``TopK`` with k from the shape."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return x.topk(min(k, x.shape[0]))

    @staticmethod
    def symbolic(g: Any, x: Any, k: int) -> Any:
        count = g.op("Min", _const(g, [k], torch.int64), _dim(g, x, 0))
        return g.op("TopK", x, count, axis_i=0, largest_i=1, sorted_i=1, outputs=2)


def topk_clamped(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """x: [N] -> values and indices of its ``min(k, N)`` largest entries, largest first."""
    return _TopK.apply(x, k)


class _ResizedSize(torch.autograd.Function):
    """The model's resize rule in float64: ONNX ``Div``/``Min``/``Mul``/``Floor`` on doubles.

    Written out as nodes because the exporter turns ``constant / tensor`` into a float32
    reciprocal, which rounds ``floor(201 * (256 / 201))`` down to 255 instead of 256.
    """

    @staticmethod
    def forward(ctx: Any, image: Tensor, min_size: int, max_size: int) -> Tensor:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        scale = min(min_size / min(h, w), max_size / max(h, w))
        # int(n * scale): what F.interpolate(scale_factor=scale, recompute_scale_factor=True) does.
        return torch.tensor([int(h * scale), int(w * scale)], dtype=torch.int64)

    @staticmethod
    def symbolic(g: Any, image: Any, min_size: int, max_size: int) -> Any:
        hw = g.op(
            "Cast",
            g.op(
                "Slice",
                g.op("Shape", image),
                _const(g, [-2], torch.int64),
                _const(g, [2**62], torch.int64),
            ),
            to_i=11,  # DOUBLE
        )
        short = g.op("ReduceMin", hw, keepdims_i=1)
        long = g.op("ReduceMax", hw, keepdims_i=1)
        scale = g.op(
            "Min",
            g.op("Div", _const(g, [float(min_size)], torch.float64), short),
            g.op("Div", _const(g, [float(max_size)], torch.float64), long),
        )
        return g.op("Cast", g.op("Floor", g.op("Mul", hw, scale)), to_i=7)  # INT64


def resized_size(image: Tensor, *, min_size: int, max_size: int) -> Tensor:
    """[2] int64 (h, w) of ``image`` ([..., H, W]) resized by the model's rule.

    ``s = min(min_size / min(H, W), max_size / max(H, W))`` and the size is
    ``(floor(H * s), floor(W * s))``, computed in float64 as ``F.interpolate`` does.
    """
    return _ResizedSize.apply(image, min_size, max_size)


class _ResizeBilinear(torch.autograd.Function):
    """Bilinear resize to a size held in a tensor: ONNX ``Resize`` (``pytorch_half_pixel``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, size: Tensor) -> Tensor:
        height, width = (int(v) for v in size.tolist())
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)

    @staticmethod
    def symbolic(g: Any, x: Any, size: Any) -> Any:
        leading = g.op(
            "Slice", g.op("Shape", x), _const(g, [0], torch.int64), _const(g, [2], torch.int64)
        )
        sizes = g.op("Concat", leading, size, axis_i=0)
        empty = _const(g, [], torch.float32)
        return g.op(
            "Resize",
            x,
            empty,  # roi (unused)
            empty,  # scales (sizes given instead)
            sizes,
            mode_s="linear",
            coordinate_transformation_mode_s="pytorch_half_pixel",
        )


def resize_bilinear(x: Tensor, size: Tensor) -> Tensor:
    """x: [N, C, H, W], size: [2] int64 (h, w) -> [N, C, h, w] as ``F.interpolate`` bilinear."""
    return _ResizeBilinear.apply(x, size)


class _PadBottomRight(torch.autograd.Function):
    """Zero padding at the bottom and right to a multiple of ``divisor``: ONNX ``Pad``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, divisor: int) -> Tensor:
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % divisor, 0, (-h) % divisor))

    @staticmethod
    def symbolic(g: Any, x: Any, divisor: int) -> Any:
        hw = g.op(
            "Slice", g.op("Shape", x), _const(g, [2], torch.int64), _const(g, [4], torch.int64)
        )
        d = _const(g, [divisor], torch.int64)
        # (-n) mod d for n >= 0, with truncating integer ops: (d - n mod d) mod d.
        extra = g.op("Mod", g.op("Sub", d, g.op("Mod", hw, d)), d)
        zeros = _const(g, [0, 0, 0, 0, 0, 0], torch.int64)
        pads = g.op("Concat", zeros, extra, axis_i=0)  # begins (N, C, H, W), ends (N, C, H, W)
        return g.op("Pad", x, pads, _const(g, 0.0, torch.float32), mode_s="constant")


def pad_to_multiple(x: Tensor, divisor: int) -> Tensor:
    """x: [N, C, H, W] -> zero-padded at the bottom/right so H and W divide by ``divisor``."""
    if divisor <= 1:
        return x
    return _PadBottomRight.apply(x, divisor)
