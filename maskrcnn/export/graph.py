"""Mask R-CNN inference for one image, written so that tracing it gives a size-free ONNX graph.

:class:`ExportableMaskRCNN` wraps a :class:`~maskrcnn.modeling.MaskRCNN` and runs the same
inference as ``model.detect`` (eval mode, fp32) with the model's own submodules (backbone, RPN
head, box and mask heads) and configuration, but every size is read from a tensor's shape at
run time and every data-dependent step is an op of :mod:`maskrcnn.export.onnx_ops`:

    image [3, H, W] -> normalise -> resize (short side min_size, long side <= max_size)
      -> pad to size_divisibility -> backbone -> RPN head -> anchors from the feature shapes
      -> per-level top-k, decode, clip, small-box and score filter, NMS within each level
      -> multi-level RoIAlign (level rule, one RoiAlign per level, scattered back)
      -> box head -> class-specific decode, clip, score filter, NMS within each class, top D
      -> multi-level RoIAlign of the detections -> mask head -> the detected class's masks
      -> boxes mapped back to H x W

It returns boxes, labels, scores and RoI-frame mask probabilities ([D, 1, M, M]); pasting them
into the image stays outside (``maskrcnn.ops.paste``, as ``model.detect(paste_masks=False)``
callers do), so the graph has no per-detection loop. One image per run: batching images of
different sizes would need the per-image NMS and clipping as loops, which ONNX has no cheap
form of.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import ModelConfig
from maskrcnn.export.onnx_ops import (
    arange_float,
    batched_nms_onnx,
    pad_to_multiple,
    resize_bilinear,
    resized_size,
    roi_align_single,
    shape_of,
    topk_clamped,
)
from maskrcnn.modeling.anchors import cell_anchors
from maskrcnn.modeling.mask_rcnn import MaskRCNN
from maskrcnn.modeling.poolers import MultiLevelRoIPooler, assign_levels
from maskrcnn.ops.boxes import decode_boxes


def clip_boxes(boxes: Tensor, size_hw: Tensor) -> Tensor:
    """boxes: [..., 4] xyxy, size_hw: [2] int64 (h, w) -> boxes clipped to the image."""
    size = size_hw.to(boxes.dtype)
    x = boxes[..., 0::2].clamp(min=0)
    y = boxes[..., 1::2].clamp(min=0)
    x = torch.minimum(x, size[1])
    y = torch.minimum(y, size[0])
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def _nonzero(mask: Tensor) -> Tensor:
    """[N] bool -> [K] int64 indices of its True entries."""
    return torch.nonzero(mask).reshape(-1)


def _at_least(boxes: Tensor, min_size: float) -> Tensor:
    """[N] bool: width and height of each xyxy box are >= ``min_size``."""
    return ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)


class ExportableMaskRCNN(nn.Module):
    """One-image inference of a MaskRCNN, in a form ``torch.onnx.export`` traces size-free.

    Args (keyword-only):
        model: the model to export (FPN or C4 design; RoIAlign poolers, ``op="align"``).
        input_dtype: "uint8" (values 0-255) or "float32" (values in [0, 1]) for the image.

    Raises:
        ValueError: for a pooler other than RoIAlign (average): RoIPool, RoIWarp and max
            RoIAlign have no standard ONNX op with the same semantics.
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(self, *, model: MaskRCNN, input_dtype: str = "uint8") -> None:
        super().__init__()
        if input_dtype not in ("uint8", "float32"):
            raise ValueError(f"input_dtype: expected 'uint8' or 'float32', got {input_dtype!r}")
        cfg = model.cfg
        heads = model.roi_heads
        if heads.mask_pooler is None or heads.mask_head is None or heads.keypoint_head is not None:
            raise ValueError(
                "only Mask R-CNN models (a mask head, no keypoint head) can be exported"
            )
        mask_pooler, mask_head = heads.mask_pooler, heads.mask_head
        for name, pooler in (("box_head", heads.box_pooler), ("mask_head", mask_pooler)):
            if pooler.cfg.op != "align":
                raise ValueError(
                    f"{name}.pooler.op={pooler.cfg.op!r} cannot be exported: only 'align' "
                    "(average RoIAlign) has a standard ONNX op (RoiAlign)"
                )
        self.cfg: ModelConfig = cfg
        self.input_dtype = input_dtype
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        self.box_pooler: MultiLevelRoIPooler = model.roi_heads.box_pooler
        self.box_head = model.roi_heads.box_head
        self.box_predictor = model.roi_heads.box_predictor
        self.mask_pooler: MultiLevelRoIPooler = mask_pooler
        self.mask_head = mask_head
        self.shared_head = model.roi_heads.shared_head
        self.rpn_features = tuple(model.rpn_features)
        self.roi_features = tuple(model.roi_features)
        generator = model.rpn.anchor_generator
        self.anchor_strides = tuple(generator.strides)
        self.rpn_head_anchors = generator.num_anchors_per_location
        for level, sizes in enumerate(cfg.anchors.sizes):
            base = cell_anchors(
                sizes, cfg.anchors.aspect_ratios, round_to_int=cfg.anchors.round_base_anchors
            )
            self.register_buffer(f"base_anchors_{level}", base, persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(cfg.input.pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.input.pixel_std), persistent=False)

    # ------------------------------------------------------------------------------------------
    # Input side

    def preprocess(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """image [3, H, W] -> padded batch [1, 3, H_pad, W_pad], resized (h, w), input (H, W).

        The resized size is ``floor(H * s)``, ``floor(W * s)`` with
        ``s = min(min_size / min(H, W), max_size / max(H, W))`` in float64, as
        ``F.interpolate(scale_factor=s, recompute_scale_factor=True)`` computes it.
        """
        cfg = self.cfg.input
        x = image.to(torch.float32)
        if self.input_dtype == "uint8":
            x = x / 255.0
        if cfg.pixel_scale != 1.0:
            x = x * cfg.pixel_scale
        if cfg.channel_order == "BGR":
            x = x[[2, 1, 0]]
        x = (x - self.pixel_mean[:, None, None]) / self.pixel_std[:, None, None]
        input_hw = shape_of(image)[1:3]
        resized_hw = resized_size(image, min_size=cfg.min_size[-1], max_size=cfg.max_size)
        resized = resize_bilinear(x[None], resized_hw)
        return pad_to_multiple(resized, cfg.size_divisibility), resized_hw, input_hw

    # ------------------------------------------------------------------------------------------
    # RPN

    def anchors(self, padded_hw: Tensor, features: list[Tensor]) -> list[Tensor]:
        """Per RPN level, [H_l * W_l * A, 4] xyxy anchors for the feature maps' sizes."""
        acfg = self.cfg.anchors
        out = []
        for level, feature in enumerate(features):
            base: Tensor = getattr(self, f"base_anchors_{level}")
            grid_hw = shape_of(feature)[2:4]
            if acfg.strides_from_grid:
                stride = (padded_hw // grid_hw).to(torch.float32)  # (stride_y, stride_x)
            else:
                s = float(self.anchor_strides[level])
                stride = torch.tensor([s, s], dtype=torch.float32)
            xs = (arange_float(grid_hw[1]) + acfg.offset) * stride[1]
            ys = (arange_float(grid_hw[0]) + acfg.offset) * stride[0]
            shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            out.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
        return out

    def proposals(self, features: list[Tensor], padded_hw: Tensor, image_hw: Tensor) -> Tensor:
        """[P, 4] xyxy proposals in resized-image pixels, best first (as the model's RPN)."""
        rcfg = self.cfg.rpn
        objectness, deltas = self.rpn_head(features)
        anchors = self.anchors(padded_hw, features)
        boxes_l, scores_l, levels_l = [], [], []
        for level, (logits, level_deltas, level_anchors) in enumerate(
            zip(objectness, deltas, anchors)
        ):
            logits = logits[0].permute(1, 2, 0).reshape(-1).float()  # [H*W*A], location-major
            # [1, 4A, H, W] -> [H*W*A, 4], location-major like the anchors.
            level_deltas = level_deltas[0].reshape(self.rpn_head_anchors, 4, -1)
            level_deltas = level_deltas.permute(2, 0, 1).reshape(-1, 4).float()
            top, idx = topk_clamped(logits, rcfg.pre_nms_topk_test)
            boxes = decode_boxes(level_deltas[idx], level_anchors[idx], rcfg.box_coder_weights)
            boxes_l.append(boxes.reshape(-1, 4))
            scores_l.append(top)
            levels_l.append(torch.zeros_like(idx) + level)
        boxes = clip_boxes(torch.cat(boxes_l), image_hw)
        scores = torch.sigmoid(torch.cat(scores_l))
        levels = torch.cat(levels_l)
        keep = _nonzero(_at_least(boxes, rcfg.min_size) & (scores >= rcfg.score_thresh))
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms_onnx(
            boxes,
            scores,
            levels,
            num_classes=len(features),
            iou_threshold=rcfg.nms_thresh,
            max_per_class=rcfg.post_nms_topk_test,
        )[: rcfg.post_nms_topk_test]
        return boxes[keep]

    # ------------------------------------------------------------------------------------------
    # RoI heads

    @staticmethod
    def pool(pooler: MultiLevelRoIPooler, features: list[Tensor], boxes: Tensor) -> Tensor:
        """[K, 4] boxes -> [K, C, S, S]: each box pooled from its FPN level, in box order."""
        pcfg = pooler.cfg
        if len(features) == 1:
            return roi_align_single(
                features[0],
                boxes,
                output_size=pcfg.output_size,
                spatial_scale=pooler.scales[0],
                sampling_ratio=pcfg.sampling_ratio,
                aligned=pcfg.aligned,
            )
        levels = assign_levels(
            boxes,
            min_level=pooler.min_level,
            max_level=pooler.max_level,
            canonical_box_size=pcfg.canonical_box_size,
            canonical_level=pcfg.canonical_level,
            eps=pcfg.level_eps,
        )
        size = pcfg.output_size
        out = boxes.new_zeros((boxes.shape[0], features[0].shape[1], size, size))
        for level, (feature, scale) in enumerate(zip(features, pooler.scales)):
            idx = _nonzero(levels == level)
            pooled = roi_align_single(
                feature,
                boxes[idx],
                output_size=size,
                spatial_scale=scale,
                sampling_ratio=pcfg.sampling_ratio,
                aligned=pcfg.aligned,
            )
            out = out.index_put((idx,), pooled)
        return out

    def _shared(self, x: Tensor) -> Tensor:
        return x if self.shared_head is None else self.shared_head(x)

    def detections(
        self, features: list[Tensor], proposals: Tensor, image_hw: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Boxes [D, 4] (resized-image pixels), scores [D], labels [D] (as ``detect_boxes``)."""
        bcfg = self.cfg.box_head
        pooled = self._shared(self.pool(self.box_pooler, features, proposals))
        class_logits, box_deltas = self.box_predictor(self.box_head(pooled))
        num_classes = self.cfg.num_classes
        boxes = decode_boxes(box_deltas.float(), proposals, bcfg.box_coder_weights)  # [K, N, 4]
        boxes = clip_boxes(boxes, image_hw)[:, 1:].reshape(-1, 4)
        scores = F.softmax(class_logits.float(), dim=-1)[:, 1:]
        labels = torch.arange(1, num_classes, dtype=torch.int64)[None].expand_as(scores)
        scores, labels = scores.reshape(-1), labels.reshape(-1)
        keep = _nonzero(scores > bcfg.score_thresh)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = _nonzero(_at_least(boxes, bcfg.min_box_size))
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms_onnx(
            boxes,
            scores,
            labels - 1,
            num_classes=num_classes - 1,
            iou_threshold=bcfg.nms_thresh,
            max_per_class=bcfg.detections_per_image,
        )[: bcfg.detections_per_image]
        return boxes[keep], scores[keep], labels[keep]

    def masks(self, features: list[Tensor], boxes: Tensor, labels: Tensor) -> Tensor:
        """[D, 1, M, M] mask probabilities of each detection's class, in its box frame."""
        logits = self.mask_head(self._shared(self.pool(self.mask_pooler, features, boxes)))
        logits = logits.float()
        if self.cfg.mask_head.loss == "softmax" and logits.shape[1] > 1:
            probs = F.softmax(logits, dim=1)
        else:
            probs = logits.sigmoid()
        if probs.shape[1] == 1:
            return probs
        index = labels[:, None, None, None].expand(-1, 1, probs.shape[2], probs.shape[3])
        return probs.gather(1, index)

    # ------------------------------------------------------------------------------------------

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Detects instances in one image.

        Args:
            image: [3, H, W] RGB, uint8 in 0-255 or float32 in [0, 1] (``input_dtype``).

        Returns:
            boxes [D, 4] float32 xyxy in the image's pixels, labels [D] int64 (>= 1), scores
            [D] float32 (best first), masks [D, 1, M, M] float32 probabilities of the detected
            class in each box's frame (M = 28 for the standard heads). D may be 0.
        """
        padded, image_hw, input_hw = self.preprocess(image)
        # Channels-last as in model.detect: faster convolutions while tracing (no ONNX node).
        feature_maps = self.backbone(padded.contiguous(memory_format=torch.channels_last))
        padded_hw = shape_of(padded)[2:4]
        proposals = self.proposals(
            [feature_maps[k] for k in self.rpn_features], padded_hw, image_hw
        )
        roi_maps = [feature_maps[k] for k in self.roi_features]
        boxes, scores, labels = self.detections(roi_maps, proposals, image_hw)
        masks = self.masks(roi_maps, boxes, labels)
        ratio = input_hw.to(torch.float32) / image_hw.to(torch.float32)  # (h, w)
        scale = torch.stack((ratio[1], ratio[0], ratio[1], ratio[0]))
        return boxes * scale, labels, scores, masks
