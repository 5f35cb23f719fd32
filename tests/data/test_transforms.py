"""Augmentation keeps image, boxes and masks consistent; vanished instances are dropped."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.config import InputConfig
from maskrcnn.data.coco import Sample
from maskrcnn.data.transforms import (
    ResizeShortestEdge,
    eval_transforms,
    train_transforms,
    train_transforms_from_config,
)
from maskrcnn.structures import Instances


def make_sample(h: int = 20, w: int = 30) -> Sample:
    """Two rectangles: a 6x4 one at x 3..9, y 2..6, and a 1x1 pixel at (20, 10)."""
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 10, 20] = True
    gt = Instances(
        image_size=(h, w),
        boxes=torch.tensor([[3.0, 2, 9, 6], [20, 10, 21, 11]]),
        labels=torch.tensor([1, 2]),
        masks=masks,
        category_names=["a", "b"],
    )
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    image[:, masks[0]] = 1.0
    return Sample(image=image, gt=gt, image_id=5, file_name="x.png")


def mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1.0, ys.max().item() + 1.0]


def test_flip_moves_image_boxes_and_masks_together():
    sample = make_sample()
    out = train_transforms((20,), 1000, flip_prob=1.0)(sample)  # no resize: short side is 20
    assert out.image.shape == (3, 20, 30) and out.gt.image_size == (20, 30)
    assert torch.equal(out.image, sample.image.flip(-1))
    assert torch.equal(out.gt.masks, sample.gt.masks.flip(-1))
    assert out.gt.boxes.tolist() == [[21, 2, 27, 6], [9, 10, 10, 11]]
    assert mask_box(out.gt.masks[0]) == out.gt.boxes[0].tolist()
    assert out.gt.labels.tolist() == [1, 2] and out.gt.category_names == ["a", "b"]
    assert out.image_id == 5 and out.file_name == "x.png"


def test_resize_short_side_and_max_size():
    sample = make_sample()
    up = train_transforms((40,), 1000, flip_prob=0.0)(sample)
    assert up.image.shape == (3, 40, 60) and up.gt.masks.shape == (2, 40, 60)
    assert torch.allclose(up.gt.boxes, sample.gt.boxes * 2)
    for mask, box in zip(up.gt.masks, up.gt.boxes):
        assert mask_box(mask) == box.tolist()  # integer scale: masks match boxes exactly
    capped = train_transforms((100,), 90, flip_prob=0.0)(sample)  # long side 30 * 3 = 90
    assert capped.image.shape == (3, 60, 90)
    odd = train_transforms((13,), 1000, flip_prob=0.0)(sample)  # scale 0.65: floor sizes
    assert odd.image.shape == (3, 13, 19)
    assert odd.gt.masks.dtype == torch.bool and odd.gt.boxes.dtype == torch.float32
    box = odd.gt.boxes[0]
    got = mask_box(odd.gt.masks[0])
    assert max(abs(a - b) for a, b in zip(got, box.tolist())) <= 1.0


def test_min_size_is_chosen_at_random():
    transform = train_transforms((10, 20, 30), 1000, flip_prob=0.0)
    torch.manual_seed(0)
    heights = {transform(make_sample()).image.shape[1] for _ in range(30)}
    assert heights == {10, 20, 30}


def test_instances_that_vanish_are_dropped():
    out = train_transforms((5,), 1000, flip_prob=0.0)(make_sample())  # scale 0.25
    assert out.image.shape == (3, 5, 7)
    assert len(out.gt) <= 2
    assert out.gt.masks.flatten(1).any(dim=1).all()
    boxes = out.gt.boxes
    assert bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all())
    tiny = train_transforms((2,), 1000, flip_prob=0.0)(make_sample())
    assert tiny.gt.category_names == ["a"]  # the single pixel is gone, names stay aligned


def test_no_instances():
    sample = make_sample()
    empty = Sample(sample.image, sample.gt[torch.zeros(2, dtype=torch.bool)], 1, "e.png")
    out = train_transforms((40,), 1000, flip_prob=1.0)(empty)
    assert out.image.shape == (3, 40, 60)
    assert out.gt.masks.shape == (0, 40, 60) and out.gt.boxes.shape == (0, 4)


def test_eval_transforms_are_the_identity():
    sample = make_sample()
    assert eval_transforms()(sample) is sample


def test_from_config_and_bad_arguments():
    transform = train_transforms_from_config(InputConfig(min_size=(16,), max_size=100))
    assert transform(make_sample()).image.shape == (3, 16, 24)
    with pytest.raises(ValueError, match="flip_prob"):
        train_transforms((10,), 100, flip_prob=2.0)
    with pytest.raises(ValueError, match="positive"):
        ResizeShortestEdge((0,), 100)
