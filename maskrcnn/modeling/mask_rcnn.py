"""Mask R-CNN: Faster R-CNN plus a mask branch, wired in one place.

    images -> Preprocessor -> backbone (+FPN) -> RPN -> RoI heads (box, then mask) -> paste

The training/inference split happens here, once: ``forward`` with targets in training mode
returns losses; in eval mode it returns detections in torchvision's format.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from maskrcnn.config import ModelConfig
from maskrcnn.modeling.precision import autocast, resolve_precision
from maskrcnn.modeling.preprocess import Preprocessor, to_input_frame
from maskrcnn.modeling.roi_heads import RoIHeads
from maskrcnn.modeling.rpn import RPN
from maskrcnn.structures import Instances


def target_to_instances(target: dict[str, Tensor] | Instances, image: Tensor) -> Instances:
    """A torchvision-style target dict (``boxes``, ``labels``, ``masks``) as Instances."""
    if isinstance(target, Instances):
        return target
    missing = [k for k in ("boxes", "labels", "masks") if k not in target]
    if missing:
        raise ValueError(f"targets: missing field(s) {missing}")
    size = (int(image.shape[-2]), int(image.shape[-1]))
    masks = target["masks"]
    if masks.shape[-2:] != size:
        raise ValueError(f"targets: masks are {tuple(masks.shape[-2:])}, image is {size}")
    return Instances(image_size=size, boxes=target["boxes"], labels=target["labels"], masks=masks)


class MaskRCNN(nn.Module):
    """The whole model. Build it with :func:`maskrcnn.build_model`."""

    def __init__(
        self,
        *,
        cfg: ModelConfig,
        preprocessor: Preprocessor,
        backbone: nn.Module,
        rpn: RPN,
        roi_heads: RoIHeads,
        rpn_features: tuple[str, ...],
        roi_features: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.preprocessor = preprocessor
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.rpn_features = rpn_features
        self.roi_features = roi_features
        # Inference precision: "fp32", or "bf16" autocast (falls back to fp32 where slow).
        self.precision = "fp32"

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """torchvision's API: losses (training, with targets) or one dict per image (eval).

        Args:
            images: [3, H_i, W_i] RGB floats in [0, 1].
            targets: training only; per image ``boxes`` [G, 4], ``labels`` [G], ``masks``
                [G, H_i, W_i].

        Returns:
            Training: a dict of scalar losses. Eval: per image ``boxes`` [N, 4] xyxy in input
            pixels, ``labels`` [N] int64, ``scores`` [N] and ``masks`` [N, 1, H_i, W_i] in [0, 1].
        """
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets (or call model.eval() first)")
            return self.losses(
                images, [target_to_instances(t, img) for t, img in zip(targets, images)]
            )
        return [r.to_dict() for r in self.detect(images)]

    def losses(self, images: list[Tensor], gt_instances: list[Instances]) -> dict[str, Tensor]:
        """Training losses of a batch.

        Images are used at the size they come in (the data pipeline resizes and flips them,
        see ``maskrcnn.data.transforms``); they are normalised and padded here.

        Returns:
            ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg`` and
            ``loss_mask``, scalars whose sum is the Mask R-CNN loss.
        """
        batch = self.preprocessor(images, resize=False)
        features = self.backbone(batch.tensor)
        gt_boxes = [gt.boxes for gt in gt_instances]
        proposals, rpn_losses = self.rpn(batch, [features[k] for k in self.rpn_features], gt_boxes)
        _, roi_losses = self.roi_heads(
            [features[k] for k in self.roi_features], proposals, batch.image_sizes, gt_instances
        )
        return {**rpn_losses, **roi_losses}

    def detect(self, images: list[Tensor], *, paste_masks: bool = True) -> list[Instances]:
        """Detections per image, boxes in each image's own pixels.

        Args:
            images: [3, H_i, W_i] RGB floats in [0, 1].
            paste_masks: True: soft masks pasted into the image, [N, 1, H_i, W_i]. False: masks
                left in the RoI frame, [N, 1, M, M] probabilities, so that a caller (e.g. an
                evaluator) can paste and encode one detection at a time.
        """
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch = self.preprocessor(images)
        device = batch.tensor.device
        pixels = batch.tensor.contiguous(memory_format=torch.channels_last)
        with autocast(resolve_precision(self.precision, device), device):
            features = self.backbone(pixels)
            proposals, _ = self.rpn(batch, [features[k] for k in self.rpn_features])
            results, _ = self.roi_heads(
                [features[k] for k in self.roi_features], proposals, batch.image_sizes
            )
        paste = self.cfg.mask_head.paste if paste_masks else None
        return [
            self._named(to_input_frame(r, size, paste=paste))
            for r, size in zip(results, original_sizes)
        ]

    @torch.inference_mode()
    def predict(self, image: Any) -> Instances:
        """One image (path, PIL image, or [3, H, W] tensor in [0, 1]) -> thresholded Instances.

        Masks are boolean [N, H, W] (probability >= ``cfg.mask_head.threshold``) and each
        instance carries its category name.
        """
        from maskrcnn.data.io import to_image_tensor

        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            result = self.detect([to_image_tensor(image).to(device)])[0]
        finally:
            self.train(was_training)
        if result.masks is not None:
            result.masks = result.masks[:, 0] >= self.cfg.mask_head.threshold
        return result

    def _named(self, result: Instances) -> Instances:
        names = self.cfg.category_names
        result.category_names = [
            names[i] if i < len(names) else str(i) for i in result.labels.tolist()
        ]
        return result
