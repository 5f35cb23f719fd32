"""roi_warp / RoIWarp against a loop reference and against roi_align on equivalent boxes."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from maskrcnn.ops import RoIWarp, roi_align, roi_warp


def c_round(v: float) -> float:
    """C's round(): halves away from zero."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def bilinear_ref(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """RoIAlign's bilinear sample with its border rules, img [C, H, W] -> [C]."""
    h, w = img.shape[1:]
    if not (-1.0 <= y <= h and -1.0 <= x <= w):
        return img.new_zeros(img.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly = 0.0 if y0 == h - 1 else y - y0
    lx = 0.0 if x0 == w - 1 else x - x0
    return (
        (1 - ly) * (1 - lx) * img[:, y0, x0]
        + (1 - ly) * lx * img[:, y0, x1]
        + ly * (1 - lx) * img[:, y1, x0]
        + ly * lx * img[:, y1, x1]
    )


def roi_warp_ref(x, boxes, size, scale, sr, reduction="avg"):
    """The documented definition by loops: RoIPool's quantised box, RoIAlign's samples averaged
    (or, for "max", their maximum; a sample outside the map counts as 0)."""
    ph_n, pw_n = size
    outs = []
    for b, x1, y1, x2, y2 in boxes.tolist():
        xs, ys = c_round(x1 * scale), c_round(y1 * scale)
        xe, ye = c_round(x2 * scale), c_round(y2 * scale)
        rw, rh = max(xe - xs + 1, 1), max(ye - ys + 1, 1)
        bh, bw = rh / ph_n, rw / pw_n
        gh = sr if sr > 0 else math.ceil(bh)
        gw = sr if sr > 0 else math.ceil(bw)
        bins = []
        for ph in range(ph_n):
            for pw in range(pw_n):
                samples = [
                    bilinear_ref(
                        x[int(b)],
                        ys + ph * bh + (iy + 0.5) * bh / gh,
                        xs + pw * bw + (ix + 0.5) * bw / gw,
                    )
                    for iy in range(gh)
                    for ix in range(gw)
                ]
                if reduction == "max":
                    bins.append(torch.stack(samples).max(dim=0).values)
                else:
                    bins.append(sum(samples) / (gh * gw))
        outs.append(torch.stack(bins, 1).view(-1, ph_n, pw_n))
    return torch.stack(outs)


def warp_boxes(gen: torch.Generator, k: int, n: int, h: int, w: int, scale: float):
    """[k, 5] float64 boxes (scaled corners never at .5), partly outside, one zero-size."""
    corners = torch.randint(-3, max(h, w) + 2, (k, 4), generator=gen).double()
    corners += torch.rand(k, 4, generator=gen, dtype=torch.float64) * 0.8 - 0.4
    x1, y1 = (
        torch.minimum(corners[:, 0], corners[:, 2]),
        torch.minimum(corners[:, 1], corners[:, 3]),
    )
    x2, y2 = (
        torch.maximum(corners[:, 0], corners[:, 2]),
        torch.maximum(corners[:, 1], corners[:, 3]),
    )
    boxes = torch.stack([x1, y1, x2, y2], 1) / scale
    boxes[0, 2:] = boxes[0, :2]
    batch = torch.randint(0, n, (k, 1), generator=gen).double()
    return torch.cat([batch, boxes], 1)


@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_matches_loop_reference(sampling_ratio, scale):
    gen = torch.Generator().manual_seed(sampling_ratio + 3)
    x = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    boxes = warp_boxes(gen, 8, 2, 9, 11, scale)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = roi_warp(x_ours, boxes, (3, 2), scale, sampling_ratio)
    ref = roi_warp_ref(x_ref, boxes, (3, 2), scale, sampling_ratio)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    grad = torch.randn(ref.shape, generator=gen, dtype=ref.dtype)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=0, atol=1e-10)
    assert ref.abs().sum() > 0
    # The quantisation matters: the same boxes through roi_align give other numbers.
    assert not torch.allclose(ours, roi_align(x, boxes, (3, 2), scale, sampling_ratio), atol=1e-3)


@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_max_matches_loop_reference(sampling_ratio, scale):
    """RoIWarp max (Table 2c) in float64: the largest quantised-RoI sample of each bin."""
    gen = torch.Generator().manual_seed(sampling_ratio + 11)
    x = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    boxes = warp_boxes(gen, 8, 2, 9, 11, scale)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = roi_warp(x_ours, boxes, (3, 2), scale, sampling_ratio, reduction="max")
    ref = roi_warp_ref(x_ref, boxes, (3, 2), scale, sampling_ratio, reduction="max")
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    grad = torch.randn(ref.shape, generator=gen, dtype=ref.dtype)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=0, atol=1e-10)
    avg = roi_warp(x, boxes, (3, 2), scale, sampling_ratio)
    if sampling_ratio == 1:  # one sample per bin: its maximum is its mean
        torch.testing.assert_close(ours.detach(), avg, rtol=0, atol=0)
    else:
        assert not torch.allclose(ours, avg, atol=1e-3)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_integer_boxes_equal_roi_align_on_inclusive_box(scale):
    """Grid-aligned boxes: RoIWarp is RoIAlign (aligned=False) on the box grown by one cell."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 10, 12, generator=gen)
    corners = torch.randint(0, 10, (12, 4), generator=gen).float()
    lo, hi = (
        torch.minimum(corners[:, :2], corners[:, 2:]),
        torch.maximum(corners[:, :2], corners[:, 2:]),
    )
    boxes = torch.cat(
        [torch.randint(0, 2, (12, 1), generator=gen).float(), lo / scale, hi / scale], 1
    )
    grown = boxes + torch.tensor([0, 0, 0, 1 / scale, 1 / scale])
    for sr in (-1, 2):
        warped = roi_warp(x, boxes, (3, 4), scale, sr)
        torch.testing.assert_close(warped, roi_align(x, grown, (3, 4), scale, sr), rtol=0, atol=0)
        ref = torchvision.ops.roi_align(x, grown, (3, 4), scale, sr, aligned=False)
        torch.testing.assert_close(warped, ref, rtol=0, atol=1e-5)
        warped_max = roi_warp(x, boxes, (3, 4), scale, sr, reduction="max")
        aligned_max = roi_align(x, grown, (3, 4), scale, sr, reduction="max")
        torch.testing.assert_close(warped_max, aligned_max, rtol=0, atol=0)


def test_gradcheck_and_empty():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    boxes = warp_boxes(gen, 4, 1, 5, 6, 1.0)
    assert torch.autograd.gradcheck(lambda t: roi_warp(t, boxes, 2, 1.0, -1), x)
    out = roi_warp(x, torch.zeros(0, 5, dtype=torch.float64), (2, 3))
    assert out.shape == (0, 2, 2, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_close_to_fp32(dtype):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 12, 12, generator=gen).to(dtype)
    boxes = warp_boxes(gen, 10, 2, 12, 12, 1.0).float()
    out = roi_warp(x, boxes, 3, 1.0, 2)
    assert out.dtype == dtype
    torch.testing.assert_close(
        out.float(), roi_warp(x.float(), boxes, 3, 1.0, 2), rtol=1e-2, atol=1e-2
    )


def test_module_repr_and_bad_arguments():
    module = RoIWarp(14, spatial_scale=0.125, sampling_ratio=2)
    assert repr(module) == (
        "RoIWarp(output_size=(14, 14), spatial_scale=0.125, sampling_ratio=2, reduction='avg')"
    )
    maxed = RoIWarp(3, reduction="max")
    torch.testing.assert_close(
        maxed(torch.ones(1, 1, 4, 4), [torch.tensor([[0.0, 0.0, 3.0, 3.0]])]),
        torch.ones(1, 1, 3, 3),
    )
    with pytest.raises(ValueError, match="reduction"):
        RoIWarp(3, reduction="sum")
    x = torch.randn(1, 2, 8, 8)
    boxes = [torch.tensor([[1.1, 2.2, 40.3, 50.1]])]
    torch.testing.assert_close(module(x, boxes), roi_warp(x, boxes, 14, 0.125, 2))
    with pytest.raises(ValueError, match="boxes"):
        roi_warp(x, [torch.zeros(2, 5)], 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_warp(x, boxes, (2, 0))
    with pytest.raises(ValueError, match="reduction"):
        roi_warp(x, boxes, 2, reduction="median")
