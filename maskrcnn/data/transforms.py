"""Training augmentation: boxes, masks and keypoints move with the image (transforms.v2).

A :class:`Sample` is wrapped into ``tv_tensors`` (``Image``, ``BoundingBoxes`` in XYXY,
``Mask``, and :class:`Keypoints` for a keypoint dataset) so one v2 pipeline transforms them
consistently, then unwrapped into a :class:`Sample` again. A horizontal flip mirrors keypoints
(x -> W - x, as boxes) and swaps each left keypoint with its right partner (the flip map,
``maskrcnn.data.keypoints.flip_map_from_names``). Instances whose box or mask vanished (e.g.
a 2-pixel object after a strong downscale) are dropped.

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


class Keypoints(tv_tensors.TVTensor):
    """[G, K, 3] (x, y, v) keypoints in pixels, as a v2 input (moved by our transforms)."""

    @classmethod
    def _wrap(cls, tensor: Tensor) -> Keypoints:
        return tensor.as_subclass(cls)

    def __new__(cls, data: Any) -> Keypoints:
        tensor = torch.as_tensor(data)
        if tensor.dim() != 3 or tensor.shape[-1] != 3:
            raise ValueError(f"Keypoints: expected [G, K, 3], got {tuple(tensor.shape)}")
        return cls._wrap(tensor)


class RandomHorizontalFlip(v2.Transform):
    """Flips everything horizontally with probability ``p``; keypoints are mirrored and their
    left/right partners swapped by ``flip_map`` (index of each keypoint's mirror image).

    Args:
        p: the probability of a flip.
        flip_map: needed only when keypoints come through (a ``ValueError`` otherwise).
    """

    def __init__(self, p: float = 0.5, *, flip_map: Sequence[int] | None = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {p}")
        self.p = p
        self.flip_map = None if flip_map is None else tuple(int(i) for i in flip_map)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        images = [x for x in flat_inputs if isinstance(x, tv_tensors.Image)]
        if not images:
            raise TypeError("RandomHorizontalFlip needs a tv_tensors.Image among its inputs")
        return {"flip": bool(torch.rand(()) < self.p), "width": TF.get_size(images[0])[1]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["flip"]:
            return inpt
        if isinstance(inpt, Keypoints):
            return flip_keypoints(inpt, params["width"], self.flip_map)
        return TF.horizontal_flip(inpt)


def flip_keypoints(keypoints: Tensor, width: int, flip_map: Sequence[int] | None) -> Keypoints:
    """[G, K, 3] keypoints of an image ``width`` wide, flipped: x -> width - x (unlabelled
    ones stay at 0), keypoint k takes the place of ``flip_map[k]``."""
    if flip_map is None:
        raise ValueError(
            "flipping keypoints needs a flip map (the left/right pairs): pass "
            "keypoint_flip_map=dataset.keypoints.flip_map to train_transforms"
        )
    if len(flip_map) != keypoints.shape[1]:
        raise ValueError(f"flip map has {len(flip_map)} entries for {keypoints.shape[1]} keypoints")
    out = keypoints.as_subclass(Tensor).clone()
    labelled = out[..., 2] > 0
    out[..., 0] = torch.where(labelled, width - out[..., 0], out[..., 0])
    return Keypoints(out[:, list(flip_map)])


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
        return {"size": [max(1, int(h * scale)), max(1, int(w * scale))], "old_size": (h, w)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, Keypoints):
            (old_h, old_w), (new_h, new_w) = params["old_size"], params["size"]
            out = inpt.as_subclass(Tensor).clone()
            out[..., 0] *= new_w / old_w
            out[..., 1] *= new_h / old_h
            return Keypoints(out)
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
        keypoints = None
        if gt.keypoints is None:
            image, boxes, masks = self.transform(image, boxes, masks)
        else:
            image, boxes, masks, keypoints = self.transform(
                image, boxes, masks, Keypoints(gt.keypoints)
            )
            keypoints = keypoints.as_subclass(Tensor)
        image = image.as_subclass(Tensor)
        new_size = (int(image.shape[-2]), int(image.shape[-1]))
        moved = Instances(
            image_size=new_size,
            boxes=boxes.as_subclass(Tensor).float(),
            labels=gt.labels,
            masks=masks.as_subclass(Tensor).bool(),
            category_names=list(gt.category_names),
            keypoints=keypoints,
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
    min_sizes: tuple[int, ...],
    max_size: int,
    flip_prob: float = 0.5,
    *,
    antialias: bool = False,
    keypoint_flip_map: Sequence[int] | None = None,
) -> SampleTransform:
    """Random shortest-side resize to one of ``min_sizes`` (long side <= ``max_size``) + h-flip.

    Randomness comes from ``torch``'s global generator (seeded per sample by
    ``maskrcnn.data.loader.build_train_loader``). ``keypoint_flip_map`` (a keypoint
    dataset's ``keypoints.flip_map``) swaps left and right keypoints when an image is flipped.
    """
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    return SampleTransform(
        v2.Compose(
            [
                ResizeShortestEdge(min_sizes, max_size, antialias=antialias),
                RandomHorizontalFlip(flip_prob, flip_map=keypoint_flip_map),
            ]
        )
    )


def train_transforms_from_config(cfg: InputConfig, flip_prob: float = 0.5) -> SampleTransform:
    """:func:`train_transforms` with the model's ``InputConfig`` (``min_size``, ``max_size``)."""
    return train_transforms(tuple(cfg.min_size), cfg.max_size, flip_prob)


def eval_transforms() -> SampleTransform:
    """The identity: at inference the model resizes images itself."""
    return SampleTransform(None)
