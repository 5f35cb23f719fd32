"""Fast R-CNN box head: pooled RoI features -> class scores and class-specific box deltas.

The paper's FPN head is two 1024-wide fully connected layers (torchvision's v2 model puts
four 3x3 convs with BatchNorm before a single FC layer). The predictor is two linear layers:
``num_classes`` logits (background = 0) and ``4 * num_classes`` deltas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image, remove_small_boxes

from maskrcnn.config import BoxHeadConfig
from maskrcnn.modeling.layers import conv_relu, conv_stack, linear_relu
from maskrcnn.ops.boxes import decode_boxes
from maskrcnn.ops.nms import batched_nms_topk


class BoxHead(nn.Module):
    """Optional convs, then FC layers with ReLU: [K, C, S, S] -> [K, fc_dim]."""

    def __init__(self, *, cfg: BoxHeadConfig, in_channels: int) -> None:
        super().__init__()
        convs = conv_stack(
            in_channels, num_convs=cfg.num_convs, out_channels=cfg.conv_dim, norm=cfg.conv_norm
        )
        channels = cfg.conv_dim if convs else in_channels
        for conv in convs:
            nn.init.kaiming_normal_(conv.conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.conv.bias is not None:
                nn.init.zeros_(conv.conv.bias)
        self.convs = nn.ModuleList(convs)
        size = cfg.pooler.output_size
        features = channels * size * size
        self.fcs = nn.ModuleList()
        for _ in range(cfg.num_fc):
            self.fcs.append(nn.Linear(features, cfg.fc_dim))
            features = cfg.fc_dim
        self.out_features = features

    def forward(self, x: Tensor) -> Tensor:
        """x: [K, C, S, S] pooled features -> [K, out_features]."""
        for conv in self.convs:
            x = conv_relu(x, conv)
        x = x.flatten(1)
        for fc in self.fcs:
            assert isinstance(fc, nn.Linear)  # for the type checker: a ModuleList yields Modules
            x = linear_relu(x, fc)
        return x


class BoxPredictor(nn.Module):
    """Class logits [K, num_classes] and class-specific deltas [K, 4 * num_classes]."""

    def __init__(self, *, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [K, F] (or [K, F, 1, 1]) -> (class_logits [K, N], box_deltas [K, 4N])."""
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


@dataclass
class Detections:
    """Detections of one image in the network frame (before masks)."""

    boxes: Tensor  # [D, 4] xyxy
    scores: Tensor  # [D]
    labels: Tensor  # [D] int64, >= 1


def detect_boxes(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    cfg: BoxHeadConfig,
) -> list[Detections]:
    """Turns box-head outputs into per-image detections.

    Softmax scores; every foreground class's decoded, clipped box is a candidate; candidates
    with score <= ``cfg.score_thresh`` or a side < ``cfg.min_box_size`` are dropped; NMS per
    class; the best ``cfg.detections_per_image`` are kept.

    Args:
        class_logits: [K, N] over all images' proposals.
        box_deltas: [K, 4N].
        proposals: per image, [L_i, 4] xyxy (sum L_i = K).
        image_sizes: (h, w) per image, for clipping.
        cfg: thresholds.
    """
    num_classes = class_logits.shape[1]
    boxes_all = decode_boxes(box_deltas, torch.cat(proposals), cfg.box_coder_weights)  # [K, N, 4]
    scores_all = F.softmax(class_logits, dim=-1)
    counts = [p.shape[0] for p in proposals]
    results = []
    for boxes, scores, size in zip(
        torch.split(boxes_all, counts), torch.split(scores_all, counts), image_sizes
    ):
        boxes = clip_boxes_to_image(boxes, size)
        labels = torch.arange(num_classes, device=scores.device).expand_as(scores)
        # Drop the background column, then treat every (proposal, class) pair as a candidate.
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores = scores[:, 1:].reshape(-1)
        labels = labels[:, 1:].reshape(-1)
        keep = torch.where(scores > cfg.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, cfg.min_box_size)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms_topk(boxes, scores, labels, cfg.nms_thresh, cfg.detections_per_image)
        results.append(Detections(boxes=boxes[keep], scores=scores[keep], labels=labels[keep]))
    return results
