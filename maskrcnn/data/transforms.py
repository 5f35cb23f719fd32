"""Training augmentation: boxes and masks move with the image (torchvision.transforms.v2).

A :class:`Sample` is wrapped into ``tv_tensors`` (``Image``, ``BoundingBoxes`` in XYXY,
``Mask``) so one v2 pipeline transforms all three consistently, then unwrapped into a
:class:`Sample` again. Instances whose box or mask vanished (e.g. a 2-pixel object after a
strong downscale) are dropped.

The model does not resize in training (``MaskRCNN.losses``): :func:`train_transforms` picks
the training scale. At inference the model resizes by itself, so :func:`eval_transforms` is
the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from maskrcnn.config import InputConfig
from maskrcnn.data.coco import Sample
from maskrcnn.structures import Instances


class ResizeShortestEdge(v2.Transform):
    """Resizes so the short side is one of ``min_sizes`` (at random), the long side <= ``max_size``.

    The scale is ``min(s / short, max_size / long)`` and the output size ``floor(side * scale)``,
    the same rule as the model's inference resize (``maskrcnn.modeling.preprocess``). Images
    are resized bilinearly (by default without antialiasing, as the model does at inference),
    masks with nearest-exact sampling (pixel centres map to pixel centres, so masks stay
    aligned with the bilinearly resized image and the rescaled boxes).
    """

    def __init__(self, min_sizes: Sequence[int], max_size: int, *, antialias: bool = False):
        super().__init__()
        min_sizes = tuple(int(s) for s in min_sizes)
        if not min_sizes or min(min_sizes) <= 0 or max_size <= 0:
            raise ValueError(
                f"ResizeShortestEdge: sizes must be positive, got min_sizes={min_sizes}, "
                f"max_size={max_size}"
            )
        self.min_sizes = min_sizes
        self.max_size = int(max_size)
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        images = [x for x in flat_inputs if isinstance(x, tv_tensors.Image)]
        if not images:
            raise TypeError("ResizeShortestEdge needs a tv_tensors.Image among its inputs")
        h, w = TF.get_size(images[0])
        short = self.min_sizes[int(torch.randint(len(self.min_sizes), ()))]
        scale = min(short / min(h, w), self.max_size / max(h, w))
        return {"size": [max(1, int(h * scale)), max(1, int(w * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            if inpt.shape[0] == 0:  # no instances: interpolate cannot take an empty batch
                return tv_tensors.wrap(inpt.new_zeros((0, *params["size"])), like=inpt)
            return TF.resize(inpt, params["size"], interpolation=InterpolationMode.NEAREST_EXACT)
        return TF.resize(
            inpt,
            params["size"],
            interpolation=InterpolationMode.BILINEAR,
            antialias=self.antialias,
        )


class SampleTransform:
    """Applies a v2 transform to a :class:`Sample` (image, boxes and masks together).

    Args:
        transform: a v2 transform taking ``(Image, BoundingBoxes, Mask)``; None is identity.
    """

    def __init__(self, transform: v2.Transform | None = None) -> None:
        self.transform = transform

    def __call__(self, sample: Sample) -> Sample:
        if self.transform is None:
            return sample
        gt = sample.gt
        h, w = sample.image.shape[-2:]
        if gt.masks is None or gt.masks.dim() != 3:
            raise ValueError(
                f"image {sample.image_id} ({sample.file_name}): transforms need gt.masks "
                f"[G, H, W], got {None if gt.masks is None else tuple(gt.masks.shape)}"
            )
        image = tv_tensors.Image(sample.image)
        boxes = tv_tensors.BoundingBoxes(gt.boxes, format="XYXY", canvas_size=(h, w))
        masks = tv_tensors.Mask(gt.masks.to(torch.uint8))
        image, boxes, masks = self.transform(image, boxes, masks)
        image = image.as_subclass(Tensor)
        new_size = (int(image.shape[-2]), int(image.shape[-1]))
        moved = Instances(
            image_size=new_size,
            boxes=boxes.as_subclass(Tensor).float(),
            labels=gt.labels,
            masks=masks.as_subclass(Tensor).bool(),
            category_names=list(gt.category_names),
        )
        return replace(sample, image=image, gt=moved[valid_instances(moved)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


def valid_instances(instances: Instances) -> Tensor:
    """[N] bool: instances with a box of positive width and height and a non-empty mask."""
    boxes = instances.boxes
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if instances.masks is not None and len(instances) > 0:
        keep &= instances.masks.flatten(1).any(dim=1)
    return keep


def train_transforms(
    min_sizes: tuple[int, ...], max_size: int, flip_prob: float = 0.5, *, antialias: bool = False
) -> SampleTransform:
    """Random shortest-side resize to one of ``min_sizes`` (long side <= ``max_size``) + h-flip.

    Randomness comes from ``torch``'s global generator (seeded per sample by
    ``maskrcnn.data.loader.build_train_loader``).
    """
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    return SampleTransform(
        v2.Compose(
            [
                ResizeShortestEdge(min_sizes, max_size, antialias=antialias),
                v2.RandomHorizontalFlip(p=flip_prob),
            ]
        )
    )


def train_transforms_from_config(cfg: InputConfig, flip_prob: float = 0.5) -> SampleTransform:
    """:func:`train_transforms` with the model's ``InputConfig`` (``min_size``, ``max_size``)."""
    return train_transforms(tuple(cfg.min_size), cfg.max_size, flip_prob)


def eval_transforms() -> SampleTransform:
    """The identity: at inference the model resizes images itself."""
    return SampleTransform(None)
