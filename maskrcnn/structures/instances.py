"""Per-image detections or ground truth: a dataclass with explicit fields."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


@dataclass
class Instances:
    """Instances of one image.

    Two frames of pixels: the *image frame* (the caller's image, as given) and the *network
    frame* (the resized, padded input the network sees; ``ImageList.image_sizes``). Ground truth
    in training and everything inside the model are in the network frame; what the model
    returns is in the image frame.

    Attributes:
        image_size: (h, w) of the frame the boxes (and image-sized masks) are in.
        boxes: [N, 4] xyxy in pixels of that frame.
        labels: [N] int64 class labels (0 is background, never a detection).
        scores: [N] confidence in [0, 1], or None for ground truth.
        masks: None, or one of three forms (ground truth: boolean/uint8 [N, H, W]):

            * [N, 1, M, M] float probabilities in the RoI frame (each box's own window, M =
              28 for the paper's heads): from ``RoIHeads.detect``, and from
              ``MaskRCNN.detect(paste_masks=False)`` (boxes already in the image frame).
            * [N, 1, H, W] float probabilities pasted into the image frame: from
              ``MaskRCNN.detect`` (the default) and ``model(images)`` in eval mode.
            * [N, H, W] bool, the probabilities thresholded at ``cfg.mask_head.threshold``:
              from ``MaskRCNN.predict``.
        category_names: name of each instance's class ("" where unknown).
        keypoints: None, or [N, K, 3] float (x, y, v) in pixels of the frame: ground truth
            visibility v (0 not labelled, 1 occluded, 2 visible) or, for detections,
            torchvision's v = 1 for every predicted keypoint.
        keypoints_scores: None, or [N, K] float heatmap logits at the predicted keypoints.
    """

    image_size: tuple[int, int]
    boxes: Tensor
    labels: Tensor
    scores: Tensor | None = None
    masks: Tensor | None = None
    category_names: list[str] = field(default_factory=list)
    keypoints: Tensor | None = None
    keypoints_scores: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: Tensor | slice | int) -> Instances:
        """Selects instances by a boolean mask, index tensor, slice or int."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index >= 0 else slice(index, index + 1 or None)
        names = self.category_names
        if names:
            picked = torch.arange(len(names))[index].reshape(-1).tolist()
            names = [names[i] for i in picked]
        return replace(
            self,
            boxes=self.boxes[index],
            labels=self.labels[index],
            scores=None if self.scores is None else self.scores[index],
            masks=None if self.masks is None else self.masks[index],
            category_names=names,
            keypoints=None if self.keypoints is None else self.keypoints[index],
            keypoints_scores=(
                None if self.keypoints_scores is None else self.keypoints_scores[index]
            ),
        )

    def to(self, device: torch.device | str) -> Instances:
        changes = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Tensor]:
        """The torchvision-style dict (``boxes``, ``labels``, ``scores``, ``masks``,
        ``keypoints``, ``keypoints_scores``; the optional ones where present)."""
        out = {"boxes": self.boxes, "labels": self.labels}
        optional = {
            "scores": self.scores,
            "masks": self.masks,
            "keypoints": self.keypoints,
            "keypoints_scores": self.keypoints_scores,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


def as_instances(target: dict[str, Tensor] | Instances, image_size: tuple[int, int]) -> Instances:
    """A torchvision-style target dict (``boxes``, ``labels``, ``masks``, ``keypoints``).

    Instances are returned as they are. ``masks`` [G, H, W] must have the image's size; a
    target with ``keypoints`` [G, K, 3] (a keypoint model's) may come without masks.
    """
    if isinstance(target, Instances):
        return target
    required = ("boxes", "labels") if "keypoints" in target else ("boxes", "labels", "masks")
    missing = [k for k in required if k not in target]
    if missing:
        raise ValueError(f"targets: missing field(s) {missing}")
    masks = target.get("masks")
    if masks is not None and tuple(masks.shape[-2:]) != tuple(image_size):
        raise ValueError(f"targets: masks are {tuple(masks.shape[-2:])}, image is {image_size}")
    keypoints = target.get("keypoints")
    if keypoints is not None and (keypoints.dim() != 3 or keypoints.shape[-1] != 3):
        raise ValueError(f"targets: keypoints must be [G, K, 3], got {tuple(keypoints.shape)}")
    return Instances(
        image_size=image_size,
        boxes=target["boxes"],
        labels=target["labels"],
        masks=masks,
        keypoints=keypoints,
    )
