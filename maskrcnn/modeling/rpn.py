"""Region proposal network: objectness and box deltas for every anchor, then proposals.

The head is a 3x3 conv (or several) shared by all levels, followed by two 1x1 convs: one
objectness logit and four box deltas per anchor. Proposals are chosen per level by objectness
(pre-NMS top-k), decoded, clipped, filtered by size and score, suppressed with NMS within each
level, and the best ``post_nms_topk`` are kept per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image, remove_small_boxes

from maskrcnn.config import NormKind, RPNConfig
from maskrcnn.modeling.anchors import AnchorGenerator
from maskrcnn.modeling.layers import conv_relu, conv_stack
from maskrcnn.modeling.losses import rpn_losses
from maskrcnn.modeling.sampling import label_anchors, sample_balanced
from maskrcnn.ops.boxes import decode_boxes, encode_boxes
from maskrcnn.ops.nms import batched_nms_topk
from maskrcnn.structures import ImageList


class RPNHead(nn.Module):
    """Shared conv(s), then per-anchor objectness logits and box deltas."""

    def __init__(
        self, *, in_channels: int, num_anchors: int, num_convs: int = 1, norm: NormKind = "none"
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            conv_stack(in_channels, num_convs=num_convs, out_channels=in_channels, norm=norm)
        )
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness [B, A, H, W] and deltas [B, 4A, H, W]."""
        objectness, deltas = [], []
        for x in features:
            for conv in self.convs:
                x = conv_relu(x, conv)
            objectness.append(self.objectness_logits(x))
            deltas.append(self.anchor_deltas(x))
        return objectness, deltas


def flatten_objectness(logits: Tensor) -> Tensor:
    """[B, A, H, W] -> [B, H * W * A], location-major like the anchors."""
    return logits.permute(0, 2, 3, 1).reshape(logits.shape[0], -1)


def flatten_deltas(deltas: Tensor) -> Tensor:
    """[B, 4A, H, W] -> [B, H * W * A, 4], location-major like the anchors."""
    b, _, h, w = deltas.shape
    return deltas.view(b, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)


@dataclass(frozen=True)
class ProposalParams:
    """Proposal-selection settings (:attr:`RPN.train_params` or :attr:`RPN.test_params`)."""

    pre_nms_topk: int
    post_nms_topk: int
    nms_thresh: float
    min_size: float
    score_thresh: float
    box_coder_weights: tuple[float, float, float, float]


def select_proposals(
    anchors: list[Tensor],
    objectness: list[Tensor],
    deltas: list[Tensor],
    image_sizes: list[tuple[int, int]],
    params: ProposalParams,
) -> tuple[list[Tensor], list[Tensor]]:
    """Chooses proposals from every anchor's prediction.

    Args:
        anchors: per level, [M_l, 4] xyxy (shared by the batch).
        objectness: per level, [B, M_l] logits.
        deltas: per level, [B, M_l, 4] box deltas.
        image_sizes: (h, w) of each image before padding; proposals are clipped to it.
        params: top-k, NMS and filtering settings.

    Returns:
        Per image, proposals [P, 4] xyxy and their objectness probabilities [P], best first.
    """
    num_images = objectness[0].shape[0]
    batch_idx = torch.arange(num_images, device=objectness[0].device)[:, None]
    top_logits, top_boxes, top_levels = [], [], []
    for level, (level_anchors, logits, level_deltas) in enumerate(zip(anchors, objectness, deltas)):
        k = min(params.pre_nms_topk, logits.shape[1])
        logits_k, idx = logits.detach().topk(k, dim=1)  # [B, k]
        picked_deltas = level_deltas.detach()[batch_idx, idx]  # [B, k, 4]
        boxes = decode_boxes(
            picked_deltas.reshape(-1, 4), level_anchors[idx.reshape(-1)], params.box_coder_weights
        )
        top_logits.append(logits_k)
        top_boxes.append(boxes.reshape(num_images, k, 4))
        top_levels.append(torch.full_like(idx, level))
    logits_all = torch.cat(top_logits, dim=1)
    boxes_all = torch.cat(top_boxes, dim=1)
    levels_all = torch.cat(top_levels, dim=1)
    scores_all = torch.sigmoid(logits_all)

    proposals, proposal_scores = [], []
    for boxes, scores, levels, size in zip(boxes_all, scores_all, levels_all, image_sizes):
        boxes = clip_boxes_to_image(boxes, size)
        keep = remove_small_boxes(boxes, params.min_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = torch.where(scores >= params.score_thresh)[0]
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms_topk(boxes, scores, levels, params.nms_thresh, params.post_nms_topk)
        proposals.append(boxes[keep])
        proposal_scores.append(scores[keep])
    return proposals, proposal_scores


@dataclass
class RPNOutput:
    """What the RPN computed for a batch: its proposals and, for the losses, every anchor's
    prediction (fp32, whatever precision the convolutions ran at).

    Attributes:
        proposals: per image, [P_i, 4] xyxy in the network frame, best first.
        anchors: per level, [M_l, 4] xyxy (shared by the batch).
        objectness: per level, [B, M_l] logits, location-major like the anchors.
        deltas: per level, [B, M_l, 4] box deltas.
    """

    proposals: list[Tensor]
    anchors: list[Tensor]
    objectness: list[Tensor]
    deltas: list[Tensor]


class RPN(nn.Module):
    """Anchors + head + proposal selection; :meth:`losses` scores the same predictions.

    The caller chooses the proposal settings: :attr:`train_params` while training,
    :attr:`test_params` at inference.
    """

    def __init__(self, *, cfg: RPNConfig, anchor_generator: AnchorGenerator, head: RPNHead):
        super().__init__()
        self.cfg = cfg
        self.anchor_generator = anchor_generator
        self.head = head

    @property
    def train_params(self) -> ProposalParams:
        """Proposal selection while training (``*_topk_train``)."""
        return self._params(self.cfg.pre_nms_topk_train, self.cfg.post_nms_topk_train)

    @property
    def test_params(self) -> ProposalParams:
        """Proposal selection at inference (``*_topk_test``)."""
        return self._params(self.cfg.pre_nms_topk_test, self.cfg.post_nms_topk_test)

    def _params(self, pre_nms_topk: int, post_nms_topk: int) -> ProposalParams:
        cfg = self.cfg
        return ProposalParams(
            pre_nms_topk=pre_nms_topk,
            post_nms_topk=post_nms_topk,
            nms_thresh=cfg.nms_thresh,
            min_size=cfg.min_size,
            score_thresh=cfg.score_thresh,
            box_coder_weights=cfg.box_coder_weights,
        )

    def forward(
        self, images: ImageList, features: list[Tensor], *, params: ProposalParams
    ) -> RPNOutput:
        """Proposals for each image (and the predictions they came from).

        Args:
            images: the padded batch (its sizes clip the proposals).
            features: per level, [B, C, H_l, W_l].
            params: :attr:`train_params` or :attr:`test_params` (or your own).
        """
        objectness_maps, delta_maps = self.head(features)
        anchors = self.anchor_generator(images.padded_size, features)
        # fp32 from here on, whatever precision the convolutions ran at.
        objectness = [flatten_objectness(o).float() for o in objectness_maps]
        deltas = [flatten_deltas(d).float() for d in delta_maps]
        proposals, _ = select_proposals(anchors, objectness, deltas, images.image_sizes, params)
        return RPNOutput(proposals=proposals, anchors=anchors, objectness=objectness, deltas=deltas)

    def losses(self, output: RPNOutput, gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        """Matches anchors to ground truth, samples them, and scores their predictions.

        Args:
            output: :meth:`forward`'s result for the batch.
            gt_boxes: per image, [G_i, 4] xyxy ground-truth boxes in the network frame.

        Returns:
            ``loss_objectness`` and ``loss_rpn_box_reg``.
        """
        cfg = self.cfg
        anchors = torch.cat(output.anchors)  # [M, 4]
        num_anchors = anchors.shape[0]
        labels, targets, positives, negatives = [], [], [], []
        for i, boxes in enumerate(gt_boxes):
            image_labels, matched = label_anchors(
                anchors, boxes.to(anchors), high=cfg.fg_iou_thresh, low=cfg.bg_iou_thresh
            )
            pos, neg = sample_balanced(
                image_labels,
                batch_size=cfg.batch_size_per_image,
                positive_fraction=cfg.positive_fraction,
            )
            labels.append(image_labels)
            targets.append(encode_boxes(matched, anchors, cfg.box_coder_weights))
            positives.append(pos + i * num_anchors)
            negatives.append(neg + i * num_anchors)
        objectness = torch.cat(output.objectness, dim=1).reshape(-1)
        return rpn_losses(
            objectness,
            torch.cat(output.deltas, dim=1).reshape(-1, 4),
            torch.cat(labels).to(objectness.dtype),
            torch.cat(targets),
            torch.cat(positives),
            torch.cat(negatives),
            smooth_l1_beta=cfg.smooth_l1_beta,
        )
