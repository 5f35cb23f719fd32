"""Mask pasting: the grid-sample paste against a per-pixel reference; input checks."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.ops.paste import paste_masks_grid_sample, paste_masks_torchvision


def _reference_paste(mask: torch.Tensor, box: list[float], size: tuple[int, int]) -> torch.Tensor:
    """Per pixel: bilinear read of the mask at the pixel centre's position in the box."""
    x0, y0, x1, y1 = box
    m = mask.shape[-1]
    out = torch.zeros(size, dtype=torch.float64)
    padded = torch.nn.functional.pad(mask.double(), (1, 1, 1, 1))  # zeros outside
    for y in range(size[0]):
        for x in range(size[1]):
            # Mask-pixel coordinates of the centre (align_corners=False convention).
            u = ((x + 0.5 - x0) / (x1 - x0)) * m - 0.5
            v = ((y + 0.5 - y0) / (y1 - y0)) * m - 0.5
            if not (-1 < u < m and -1 < v < m):
                continue
            u0, v0 = int(torch.floor(torch.tensor(u))), int(torch.floor(torch.tensor(v)))
            fu, fv = u - u0, v - v0
            acc = 0.0
            for dv, wv in ((0, 1 - fv), (1, fv)):
                for du, wu in ((0, 1 - fu), (1, fu)):
                    acc += wv * wu * padded[v0 + dv + 1, u0 + du + 1].item()
            out[y, x] = acc
    return out


def test_grid_sample_paste_matches_per_pixel_reference():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 1, 6, 6, generator=gen)
    boxes = torch.tensor([[2.3, 1.7, 9.6, 8.2], [-3.0, 4.5, 5.5, 14.9], [10.2, 0.4, 10.9, 3.1]])
    pasted = paste_masks_grid_sample(masks, boxes, (12, 14))
    for i in range(3):
        expected = _reference_paste(masks[i, 0], boxes[i].tolist(), (12, 14))
        torch.testing.assert_close(pasted[i, 0].double(), expected, rtol=0, atol=1e-5)


def test_full_mask_covers_exactly_the_pixel_centres_inside_the_box():
    masks = torch.ones(1, 1, 28, 28)
    boxes = torch.tensor([[3.2, 2.0, 10.7, 6.5]])
    binary = paste_masks_grid_sample(masks, boxes, (10, 14))[0, 0] >= 0.5
    ys, xs = torch.meshgrid(torch.arange(10) + 0.5, torch.arange(14) + 0.5, indexing="ij")
    inside = (xs >= 3.2) & (xs <= 10.7) & (ys >= 2.0) & (ys <= 6.5)
    assert torch.equal(binary, inside)


def test_degenerate_and_outside_boxes_paste_nothing():
    masks = torch.ones(2, 1, 28, 28)
    boxes = torch.tensor([[5.0, 5.0, 5.0, 9.0], [50.0, 50.0, 60.0, 60.0]])
    assert paste_masks_grid_sample(masks, boxes, (20, 20)).sum() == 0
    # torchvision's "+1" gives a zero-width box a one-pixel column; outside stays empty.
    quantised = paste_masks_torchvision(masks, boxes, (20, 20))
    assert quantised[0, 0, :, 5].sum() > 0 and quantised[1].sum() == 0


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="masks"):
        paste_masks_grid_sample(torch.ones(2, 28, 28), torch.zeros(2, 4), (10, 10))
    with pytest.raises(ValueError, match="boxes"):
        paste_masks_torchvision(torch.ones(2, 1, 28, 28), torch.zeros(3, 4), (10, 10))
