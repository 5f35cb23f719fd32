"""Overlays and the ground-truth/prediction grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.structures import Instances
from maskrcnn.viz.draw import draw_instances, predictions_grid


def _instances(h: int, w: int, *, scores: list[float] | None, soft: bool = False) -> Instances:
    boxes = torch.tensor([[2.0, 3.0, 20.0, 15.0], [10.0, 10.0, 30.0, 28.0]])
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 3:15, 2:20] = True
    masks[1, 10:28, 10:30] = True
    return Instances(
        image_size=(h, w),
        boxes=boxes,
        labels=torch.tensor([1, 2]),
        scores=None if scores is None else torch.tensor(scores),
        masks=masks[:, None].float() if soft else masks,
        category_names=["square", "bar"],
    )


def test_draw_instances_overlays_masks_above_the_threshold():
    image = torch.full((3, 32, 40), 0.5)
    drawn = draw_instances(image, _instances(32, 40, scores=[0.9, 0.2]), score_thresh=0.5)
    assert isinstance(drawn, Image.Image) and drawn.size == (40, 32) and drawn.mode == "RGB"
    pixels = np.asarray(drawn).astype(int)
    assert np.abs(pixels[8, 10] - 128).sum() > 30  # inside the kept mask: tinted
    assert np.abs(pixels[25, 25] - 128).sum() == 0  # only in the dropped instance: untouched
    soft = draw_instances(image, _instances(32, 40, scores=[0.9, 0.2], soft=True))
    assert np.array_equal(np.asarray(soft), np.asarray(drawn))


def test_draw_instances_ground_truth_and_bad_masks():
    image = torch.rand(3, 32, 40)
    drawn = draw_instances(image, _instances(32, 40, scores=None))  # no scores: all drawn
    assert drawn.size == (40, 32)
    bad = _instances(32, 40, scores=[0.9, 0.8])
    bad.masks = torch.ones(2, 1, 28, 28)
    with pytest.raises(ValueError, match="image-sized"):
        draw_instances(image, bad)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        draw_instances(torch.rand(32, 40), bad)


def test_predictions_grid_puts_ground_truth_beside_predictions(tmp_path):
    images = [torch.rand(3, 32, 40), torch.rand(3, 36, 30)]
    gts = [_instances(32, 40, scores=None), _instances(36, 30, scores=None)]
    preds = [_instances(32, 40, scores=[0.9, 0.7]), _instances(36, 30, scores=[0.3, 0.8])]
    path = predictions_grid(images, gts, preds, tmp_path / "sub" / "grid.png")
    big = [torch.rand(3, 32, 200), torch.rand(3, 36, 150)]
    big_gts = [_instances(32, 200, scores=None), _instances(36, 150, scores=None)]
    wide = predictions_grid(big, big_gts, big_gts, tmp_path / "wide.png")
    with Image.open(path) as grid, Image.open(wide) as wide_grid:
        assert grid.size[1] == wide_grid.size[1] == 16 + 32 + 36 + 3 * 6
        assert grid.size[0] >= 2 * 40 + 3 * 6  # at least as wide as the titles
        assert wide_grid.size[0] == 2 * 200 + 3 * 6
    with pytest.raises(ValueError, match="2 images, 1 gts"):
        predictions_grid(images, gts[:1], preds, tmp_path / "x.png")


def test_draw_instances_draws_keypoints_and_skeleton():
    image = torch.zeros(3, 40, 60)
    instances = Instances(
        image_size=(40, 60),
        boxes=torch.tensor([[5.0, 5.0, 55.0, 35.0]]),
        labels=torch.tensor([1]),
        keypoints=torch.tensor([[[10.0, 20.0, 2.0], [50.0, 20.0, 1.0], [30.0, 30.0, 0.0]]]),
    )
    plain = np.asarray(draw_instances(image, instances))
    drawn = np.asarray(draw_instances(image, instances, skeleton=((0, 1), (1, 2))))
    assert plain[20, 30].sum() == 0 and drawn[20, 30].sum() > 0  # the limb 0-1
    assert plain[20, 10].sum() > 0  # keypoints are dots with or without a skeleton
    assert plain[30, 30].sum() == 0 and drawn[25, 40].sum() == 0  # v = 0: no dot, no limb
