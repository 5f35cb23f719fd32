"""Mask R-CNN: Faster R-CNN plus a mask branch, wired in one place.

    images -> Preprocessor -> backbone (+FPN) -> RPN -> RoI heads (box, then mask and/or
    keypoints) -> Postprocessor

The training/inference split happens here, once: :meth:`MaskRCNN.losses` and
:meth:`MaskRCNN.detect` call each stage's own training or inference method with the settings
of that path; no stage looks at ``self.training``. ``forward`` is torchvision's boundary:
losses in training mode with targets, detections in torchvision's dicts in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from maskrcnn.config import ModelConfig, Precision
from maskrcnn.modeling.modes import eval_mode
from maskrcnn.modeling.postprocess import Postprocessor
from maskrcnn.modeling.precision import autocast, resolve_precision
from maskrcnn.modeling.preprocess import Preprocessor
from maskrcnn.modeling.roi_heads import RoIHeads
from maskrcnn.modeling.rpn import RPN
from maskrcnn.structures import Instances, as_instances


class MaskRCNN(nn.Module):
    """The whole model. Build it with :func:`maskrcnn.build_model`.

    ``cfg`` is read at run time for the inference precision (``cfg.precision``), the mask paste
    and threshold (``cfg.mask_head``) and the category names; change them by replacing it,
    e.g. ``model.cfg = model.cfg.replace(precision="bf16")`` or :meth:`set_precision`.
    """

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
        self.postprocessor = Postprocessor()
        self.rpn_features = rpn_features
        self.roi_features = roi_features

    def set_precision(self, precision: Precision) -> MaskRCNN:
        """Sets the inference precision ``cfg.precision`` (fp32, bf16, fp16, auto); returns self."""
        self.cfg = self.cfg.replace(precision=precision)
        return self

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor] | Instances] | None = None
    ) -> Any:
        """torchvision's API: losses (training, with targets) or one dict per image (eval).

        Args:
            images: [3, H_i, W_i] RGB floats in [0, 1].
            targets: training only; per image ``boxes`` [G, 4], ``labels`` [G], ``masks``
                [G, H_i, W_i] and, for a keypoint head, ``keypoints`` [G, K, 3] (masks may be
                left out then) (a dict, or Instances).

        Returns:
            Training: a dict of scalar losses. Eval: per image ``boxes`` [N, 4] xyxy in the
            image frame, ``labels`` [N] int64, ``scores`` [N], ``masks`` [N, 1, H_i, W_i]
            probabilities (with a mask head) and ``keypoints`` [N, K, 3], ``keypoints_scores``
            [N, K] (with a keypoint head).
        """
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets (or call model.eval() first)")
            sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
            return self.losses(images, [as_instances(t, s) for t, s in zip(targets, sizes)])
        return [r.to_dict() for r in self.detect(images)]

    def losses(self, images: list[Tensor], gt_instances: list[Instances]) -> dict[str, Tensor]:
        """Training losses of a batch.

        Images are used at the size they come in (the data pipeline resizes and flips them,
        see ``maskrcnn.data.transforms``), so the ground truth is already in the network frame;
        they are normalised and padded here.

        Returns:
            ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``,
            ``loss_mask`` (with a mask head) and ``loss_keypoint`` (with a keypoint head),
            scalars whose sum is the model's loss.
        """
        batch = self.preprocessor(images, resize=False)
        pixels = batch.tensor.contiguous(memory_format=torch.channels_last)
        rpn_levels, roi_levels = self._levels(self.backbone(pixels))
        rpn_out = self.rpn(batch, rpn_levels, params=self.rpn.train_params)
        rpn_losses = self.rpn.losses(rpn_out, [gt.boxes for gt in gt_instances])
        roi_losses = self.roi_heads.losses(roi_levels, rpn_out.proposals, gt_instances)
        return {**rpn_losses, **roi_losses}

    def detect(self, images: list[Tensor], *, paste_masks: bool = True) -> list[Instances]:
        """Detections per image, in the image frame (each image's own pixels).

        Runs at ``cfg.precision`` (resolved for the device, see ``maskrcnn.modeling.precision``).

        Args:
            images: [3, H_i, W_i] RGB floats in [0, 1].
            paste_masks: True: masks pasted into the image, [N, 1, H_i, W_i] probabilities.
                False: masks left in the RoI frame, [N, 1, M, M] probabilities, so that a caller
                (e.g. an evaluator) can paste and encode one detection at a time.
        """
        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch = self.preprocessor(images)
        device = batch.tensor.device
        pixels = batch.tensor.contiguous(memory_format=torch.channels_last)
        with autocast(resolve_precision(self.cfg.precision, device), device):
            rpn_levels, roi_levels = self._levels(self.backbone(pixels))
            proposals = self.rpn(batch, rpn_levels, params=self.rpn.test_params).proposals
            results = self.roi_heads.detect(roi_levels, proposals, batch.image_sizes)
        paste = self.cfg.mask_head.paste if paste_masks else None
        return [self._named(r) for r in self.postprocessor(results, image_sizes, paste=paste)]

    @torch.inference_mode()
    def predict(self, image: Any) -> Instances:
        """One image (path, PIL image, or [3, H, W] tensor in [0, 1]) -> thresholded Instances.

        Masks are boolean [N, H, W] (probability >= ``cfg.mask_head.threshold``) and each
        instance carries its category name.
        """
        from maskrcnn.data.io import to_image_tensor

        with eval_mode(self):
            device = next(self.parameters()).device
            result = self.detect([to_image_tensor(image).to(device)])[0]
        if result.masks is not None:
            result.masks = result.masks[:, 0] >= self.cfg.mask_head.threshold
        return result

    def _levels(self, features: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """The feature maps the RPN reads, and those the RoI heads pool from."""
        return [features[k] for k in self.rpn_features], [features[k] for k in self.roi_features]

    def _named(self, result: Instances) -> Instances:
        names = self.cfg.category_names
        result.category_names = [
            names[i] if i < len(names) else str(i) for i in result.labels.tolist()
        ]
        return result
