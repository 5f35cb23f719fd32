"""Per-image detections or ground truth: a dataclass with explicit fields."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


@dataclass
class Instances:
    """Instances of one image.

    Attributes:
        image_size: (h, w) of the image the boxes and masks refer to.
        boxes: [N, 4] xyxy in pixels.
        labels: [N] int64 class labels (0 is background, never a detection).
        scores: [N] confidence in [0, 1], or None for ground truth.
        masks: [N, H, W] bool image-sized masks, [N, 1, H, W] soft masks, or None.
        category_names: name of each instance's class ("" where unknown).
    """

    image_size: tuple[int, int]
    boxes: Tensor
    labels: Tensor
    scores: Tensor | None = None
    masks: Tensor | None = None
    category_names: list[str] = field(default_factory=list)

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
        )

    def to(self, device: torch.device | str) -> Instances:
        changes = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Tensor]:
        """The torchvision-style dict (``boxes``, ``labels``, ``scores``, ``masks``)."""
        out = {"boxes": self.boxes, "labels": self.labels}
        if self.scores is not None:
            out["scores"] = self.scores
        if self.masks is not None:
            out["masks"] = self.masks
        return out
