"""RoI heads: the box branch and the mask branch on pooled RoI features.

Inference: pool each proposal, run the box head, turn scores and deltas into detections,
then pool each detection and run the mask branch on it (the paper's test-time order: masks
only for the final, at most 100, boxes). For the C4 design a shared head (res5) runs on the
pooled features of both branches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from maskrcnn.config import BoxHeadConfig, MaskHeadConfig
from maskrcnn.modeling.box_head import BoxPredictor, detect_boxes
from maskrcnn.modeling.mask_head import MaskHead, mask_probs_for_labels
from maskrcnn.modeling.poolers import MultiLevelRoIPooler
from maskrcnn.structures import Instances


class GlobalAvgPool(nn.Module):
    """[K, C, H, W] -> [K, C]: the C4 box head (res5 output averaged over space)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class RoIHeads(nn.Module):
    """Box and mask branches.

    Args (keyword-only):
        box_pooler / mask_pooler: multi-level RoI pooling for each branch.
        box_head: pooled features -> [K, F] (``out_features`` attribute gives F).
        box_predictor: [K, F] -> class logits and box deltas.
        mask_head: pooled features -> mask logits.
        box_cfg / mask_cfg: the branches' settings (thresholds, mask loss kind).
        shared_head: run on pooled features before both heads (res5 for C4); None for FPN.
    """

    def __init__(
        self,
        *,
        box_pooler: MultiLevelRoIPooler,
        box_head: nn.Module,
        box_predictor: BoxPredictor,
        mask_pooler: MultiLevelRoIPooler,
        mask_head: MaskHead,
        box_cfg: BoxHeadConfig,
        mask_cfg: MaskHeadConfig,
        shared_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.shared_head = shared_head
        self.box_cfg = box_cfg
        self.mask_cfg = mask_cfg

    def _shared(self, x: Tensor) -> Tensor:
        return x if self.shared_head is None else self.shared_head(x)

    def forward(
        self,
        features: list[Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        gt_instances: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        """Detections with RoI-frame mask probabilities, and the losses with ground truth.

        Args:
            features: per level, [B, C, H_l, W_l].
            proposals: per image, [P_i, 4] xyxy in padded-input pixels.
            image_sizes: (h, w) of each image (before padding), for clipping.
            gt_instances: per image ground truth (training only).

        Returns:
            Per image, Instances with ``boxes`` [D, 4] in input pixels, ``scores``, ``labels``
            and ``masks`` [D, 1, 2S, 2S] probabilities of the predicted class in the box frame.
        """
        if gt_instances is not None:
            raise NotImplementedError("RoI-head training losses are not implemented yet")
        box_features = self._shared(self.box_pooler(features, proposals))
        class_logits, box_deltas = self.box_predictor(self.box_head(box_features))
        detections = detect_boxes(class_logits, box_deltas, proposals, image_sizes, self.box_cfg)

        detected_boxes = [d.boxes for d in detections]
        labels = torch.cat([d.labels for d in detections])
        if labels.numel() > 0:
            mask_features = self._shared(self.mask_pooler(features, detected_boxes))
            mask_logits = self.mask_head(mask_features)
            mask_probs = mask_probs_for_labels(mask_logits, labels, loss=self.mask_cfg.loss)
        else:
            size = 2 * self.mask_cfg.pooler.output_size
            mask_probs = features[0].new_zeros((0, 1, size, size))
        per_image = mask_probs.split([len(b) for b in detected_boxes])
        results = [
            Instances(image_size=size, boxes=d.boxes, labels=d.labels, scores=d.scores, masks=m)
            for d, m, size in zip(detections, per_image, image_sizes)
        ]
        return results, {}
