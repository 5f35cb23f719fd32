"""RoI heads: the box branch and the mask branch on pooled RoI features.

Two entry points, no mode switch: ``detect`` (inference) and ``losses`` (training).
Inference: pool each proposal, run the box head, turn scores and deltas into detections, then
pool each detection and run the mask branch on it (the paper's test-time order: masks only for
the final, at most 100, boxes). For the C4 design a shared head (res5) runs on the
pooled features of both branches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from maskrcnn.config import BoxHeadConfig, MaskHeadConfig
from maskrcnn.modeling.box_head import BoxHead, BoxPredictor, Detections, detect_boxes
from maskrcnn.modeling.keypoint_head import KeypointHead, heatmaps_to_keypoints
from maskrcnn.modeling.keypoint_losses import keypoint_loss
from maskrcnn.modeling.losses import fast_rcnn_losses, mask_loss
from maskrcnn.modeling.mask_head import MaskHead, mask_probs_for_labels
from maskrcnn.modeling.poolers import MultiLevelRoIPooler
from maskrcnn.modeling.sampling import RoITargets, label_proposals
from maskrcnn.ops import roi_align
from maskrcnn.structures import Instances


class GlobalAvgPool(nn.Module):
    """[K, C, H, W] -> [K, C]: the C4 box head (res5 output averaged over space)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        """x: [K, C, H, W] -> [K, C]."""
        return x.mean(dim=(2, 3))


# What turns pooled box features into [K, F] vectors: the FC head (FPN) or the average (C4).
BoxFeatureHead = BoxHead | GlobalAvgPool


class RoIHeads(nn.Module):
    """Box and mask branches: :meth:`detect` at inference, :meth:`losses` while training.

    Args (keyword-only):
        box_pooler / mask_pooler: multi-level RoI pooling for each branch.
        box_head: pooled features -> [K, F] (its ``out_features`` is F).
        box_predictor: [K, F] -> class logits and box deltas.
        mask_head: pooled features -> mask logits (pooler and head None: no mask branch).
        box_cfg / mask_cfg: the branches' settings (thresholds, mask loss kind).
        shared_head: run on pooled features before both heads (res5 for C4); None for FPN.
        keypoint_pooler / keypoint_head: the keypoint branch (None: none).
    """

    def __init__(
        self,
        *,
        box_pooler: MultiLevelRoIPooler,
        box_head: BoxFeatureHead,
        box_predictor: BoxPredictor,
        mask_pooler: MultiLevelRoIPooler | None,
        mask_head: MaskHead | None,
        box_cfg: BoxHeadConfig,
        mask_cfg: MaskHeadConfig,
        shared_head: nn.Module | None = None,
        keypoint_pooler: MultiLevelRoIPooler | None = None,
        keypoint_head: KeypointHead | None = None,
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
        if (mask_pooler is None) != (mask_head is None):
            raise ValueError("RoIHeads: give both mask_pooler and mask_head, or neither")
        if (keypoint_pooler is None) != (keypoint_head is None):
            raise ValueError("RoIHeads: give both keypoint_pooler and keypoint_head, or neither")
        self.keypoint_pooler = keypoint_pooler
        self.keypoint_head = keypoint_head

    def _shared(self, x: Tensor) -> Tensor:
        return x if self.shared_head is None else self.shared_head(x)

    def detect(
        self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Instances]:
        """Detections, with the predicted class's mask probabilities in the RoI frame.

        Args:
            features: per level, [B, C, H_l, W_l].
            proposals: per image, [P_i, 4] xyxy in the network frame.
            image_sizes: (h, w) of each image in the network frame (before padding), for
                clipping.

        Returns:
            Per image, Instances in the network frame (``image_size`` from ``image_sizes``)
            with ``boxes`` [D, 4], ``scores``, ``labels`` and ``masks`` [D, 1, M, M]: the
            predicted class's probabilities in the RoI frame (M = 28 for the paper's heads);
            None without a mask branch. With a keypoint branch also ``keypoints`` [D, K, 3]
            (x, y, 1) in the network frame and ``keypoints_scores`` [D, K].
        """
        box_features = self._shared(self.box_pooler(features, proposals))
        class_logits, box_deltas = self.box_predictor(self.box_head(box_features))
        detections = detect_boxes(
            class_logits.float(), box_deltas.float(), proposals, image_sizes, self.box_cfg
        )

        detected_boxes = [d.boxes for d in detections]
        counts = [len(b) for b in detected_boxes]
        masks: list[Tensor | None] = [None] * len(detections)
        if self.mask_head is not None:
            masks = list(torch.split(self._mask_probs(features, detections), counts))
        keypoints: list[tuple[Tensor, Tensor] | tuple[None, None]] = [(None, None)] * len(counts)
        if self.keypoint_head is not None:
            keypoints = list(self._keypoints(features, detected_boxes))
        return [
            Instances(
                image_size=size,
                boxes=d.boxes,
                labels=d.labels,
                scores=d.scores,
                masks=m,
                keypoints=kp[0],
                keypoints_scores=kp[1],
            )
            for d, m, kp, size in zip(detections, masks, keypoints, image_sizes)
        ]

    def _keypoints(
        self, features: list[Tensor], boxes: list[Tensor]
    ) -> list[tuple[Tensor, Tensor]]:
        """Per image, keypoints [D, K, 3] (x, y, 1) and their scores [D, K] for ``boxes``."""
        assert self.keypoint_pooler is not None and self.keypoint_head is not None
        logits = self.keypoint_head(self.keypoint_pooler(features, boxes)).float()
        out = []
        for maps, b in zip(torch.split(logits, [len(b) for b in boxes]), boxes):
            out.append(heatmaps_to_keypoints(maps, b))
        return out

    def _mask_probs(self, features: list[Tensor], detections: list[Detections]) -> Tensor:
        """[D, 1, M, M] mask probabilities of the detected class, all images together."""
        assert self.mask_pooler is not None and self.mask_head is not None
        detected_boxes = [d.boxes for d in detections]
        labels = torch.cat([d.labels for d in detections])
        if labels.numel() > 0:
            mask_features = self._shared(self.mask_pooler(features, detected_boxes))
            mask_logits = self.mask_head(mask_features)
            mask_probs = mask_probs_for_labels(mask_logits, labels, loss=self.mask_cfg.loss)
        else:
            # The deconvolution doubles the pooled size; C4's res5 halves it first.
            pooled = self.mask_cfg.pooler.output_size
            size = pooled if self.shared_head is not None else 2 * pooled
            mask_probs = features[0].new_zeros((0, 1, size, size))
        return mask_probs

    def losses(
        self, features: list[Tensor], proposals: list[Tensor], gt_instances: list[Instances]
    ) -> dict[str, Tensor]:
        """Samples RoIs against the ground truth and scores the box and mask branches.

        Args:
            features: per level, [B, C, H_l, W_l].
            proposals: per image, [P_i, 4] xyxy in the network frame (the RPN's).
            gt_instances: per image, ground truth in the network frame, masks [G, H, W].

        Returns:
            ``loss_classifier``, ``loss_box_reg``, ``loss_mask`` (with a mask branch) and
            ``loss_keypoint`` (with a keypoint branch).
        """
        box_cfg = self.box_cfg
        targets = [
            label_proposals(
                p.detach(),
                gt.boxes.to(p),
                gt.labels,
                fg_iou=box_cfg.fg_iou_thresh,
                bg_iou=box_cfg.bg_iou_thresh,
                batch_size=box_cfg.batch_size_per_image,
                positive_fraction=box_cfg.positive_fraction,
                box_coder_weights=box_cfg.box_coder_weights,
            )
            for p, gt in zip(proposals, gt_instances)
        ]
        box_features = self._shared(self.box_pooler(features, [t.proposals for t in targets]))
        class_logits, box_deltas = self.box_predictor(self.box_head(box_features))
        losses = fast_rcnn_losses(
            class_logits,
            box_deltas,
            torch.cat([t.labels for t in targets]),
            torch.cat([t.regression_targets for t in targets]),
            smooth_l1_beta=box_cfg.smooth_l1_beta,
        )
        if self.mask_head is not None:
            losses["loss_mask"] = self.mask_losses(features, targets, gt_instances)
        if self.keypoint_head is not None:
            losses["loss_keypoint"] = self.keypoint_losses(features, targets, gt_instances)
        return losses

    def keypoint_losses(
        self, features: list[Tensor], targets: list[RoITargets], gt_instances: list[Instances]
    ) -> Tensor:
        """Keypoint loss on the foreground RoIs against their matched instance's keypoints."""
        assert self.keypoint_pooler is not None and self.keypoint_head is not None
        fg = [t.labels > 0 for t in targets]
        fg_boxes = [t.proposals[keep] for t, keep in zip(targets, fg)]
        logits = self.keypoint_head(self.keypoint_pooler(features, fg_boxes))
        num_keypoints = logits.shape[1]
        matched = []
        for t, keep, gt in zip(targets, fg, gt_instances):
            if gt.keypoints is None:
                raise ValueError("training a keypoint head needs ground-truth keypoints")
            if gt.keypoints.shape[0] == 0:
                matched.append(logits.new_zeros((0, num_keypoints, 3)))
                continue
            matched.append(gt.keypoints[t.matched_gt[keep]].to(logits.dtype))
        return keypoint_loss(logits, torch.cat(fg_boxes), torch.cat(matched))

    def mask_losses(
        self, features: list[Tensor], targets: list[RoITargets], gt_instances: list[Instances]
    ) -> Tensor:
        """Mask loss on the foreground RoIs; targets cut from the ground-truth masks."""
        assert self.mask_pooler is not None and self.mask_head is not None
        fg = [t.labels > 0 for t in targets]
        fg_boxes = [t.proposals[keep] for t, keep in zip(targets, fg)]
        mask_logits = self.mask_head(self._shared(self.mask_pooler(features, fg_boxes)))
        size = mask_logits.shape[-1]
        mask_targets = []
        for t, keep, gt in zip(targets, fg, gt_instances):
            if gt.masks is None:
                raise ValueError("training needs ground-truth masks for every image")
            boxes = t.proposals[keep]
            rois = torch.cat([t.matched_gt[keep, None].to(boxes), boxes], dim=1)  # [F, 5]
            if gt.masks.shape[0] == 0:
                mask_targets.append(boxes.new_zeros((0, size, size)))
                continue
            gt_masks = gt.masks[:, None].to(boxes.dtype)  # [G, 1, H, W]
            cut = roi_align(gt_masks, rois, size, 1.0, -1, self.mask_cfg.pooler.aligned)
            mask_targets.append(cut[:, 0])
        labels = torch.cat([t.labels[keep] for t, keep in zip(targets, fg)])
        return mask_loss(mask_logits, labels, torch.cat(mask_targets), kind=self.mask_cfg.loss)
