"""roi_pool / RoIPool against torchvision's CPU kernel, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torchvision

from maskrcnn.ops import RoIPool, _roi_args, roi_pool


def pool_boxes(gen: torch.Generator, k: int, n: int, h: int, w: int, scale: float) -> torch.Tensor:
    """[k, 5] float64 boxes whose scaled corners are never near .5 (rounding modes differ there):
    inside, partly and wholly outside the map, zero-size and inverted ones."""
    corners = torch.randint(-4, max(h, w) + 4, (k, 4), generator=gen).double()
    frac = torch.rand(k, 4, generator=gen, dtype=torch.float64) * 0.8 - 0.4  # away from .5
    x1, y1, x2, y2 = (corners + frac).unbind(1)
    boxes = torch.stack([x1, y1, x1 + (x2 - x1).abs(), y1 + (y2 - y1).abs()], 1) / scale
    boxes[0, 2:] = boxes[0, :2]  # zero size
    boxes[1] = torch.tensor([-9.2, -8.1, -4.3, -3.9]) / scale  # wholly outside
    boxes[2] = torch.tensor([3.2, 2.1, 1.3, 5.9]) / scale  # inverted x
    batch = torch.randint(0, n, (k, 1), generator=gen).double()
    return torch.cat([batch, boxes], 1)


def compare_with_torchvision(x, boxes, size, scale, gen):
    x_ours = x.detach().clone().requires_grad_()
    x_tv = x.detach().clone().requires_grad_()
    ours = roi_pool(x_ours, boxes, size, scale)
    ref = torchvision.ops.roi_pool(x_tv, boxes, size, scale)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    grad = torch.randn(ref.shape, generator=gen, dtype=ref.dtype)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_tv.grad, rtol=0, atol=1e-6)
    assert ref.abs().sum() > 0 and x_tv.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_matches_torchvision(dtype, scale):
    gen = torch.Generator().manual_seed(int(scale * 8))
    for size in [(3, 4), (5, 2), 7]:
        x = torch.randn(2, 3, 11, 14, generator=gen, dtype=dtype)
        boxes = pool_boxes(gen, 25, 2, 11, 14, scale).to(dtype)
        compare_with_torchvision(x, boxes, size, scale, gen)


def test_list_form_non_contiguous_and_chunks(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(3, 13, 4, 12, generator=gen)
    x = base.permute(0, 2, 1, 3)[:, :, 1:, 1:]  # [3, 4, 12, 11], non-contiguous
    boxes = pool_boxes(gen, 18, 3, 12, 11, 0.5).float()
    compare_with_torchvision(x, boxes, (4, 3), 0.5, gen)
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(3)]
    rois = torch.cat([boxes[boxes[:, 0] == i] for i in range(3)])
    torch.testing.assert_close(roi_pool(x, per_image, (4, 3), 0.5), roi_pool(x, rois, (4, 3), 0.5))
    monkeypatch.setattr(_roi_args, "CHUNK_ELEMENTS", 100)
    compare_with_torchvision(x, rois, (4, 3), 0.5, gen)


def test_empty_boxes():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    out = roi_pool(x, torch.zeros(0, 5), (2, 3))
    assert out.shape == (0, 2, 2, 3)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_equals_fp32(dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 10, 10, generator=gen).to(dtype)
    boxes = pool_boxes(gen, 12, 2, 10, 10, 1.0).float()
    out = roi_pool(x, boxes, 3)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), roi_pool(x.float(), boxes, 3), rtol=0, atol=0)


def test_gradcheck():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0, 0.2, 1.1, 4.3, 5.2], [0, 2.0, 0.0, 5.8, 3.9]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, boxes, (2, 3)), x)


def test_module_repr_and_bad_arguments():
    module = RoIPool((7, 7), 0.0625)
    assert repr(module) == "RoIPool(output_size=(7, 7), spatial_scale=0.0625)"
    x = torch.randn(1, 2, 8, 8)
    boxes = torch.tensor([[0, 1.1, 2.2, 60.3, 70.1]])
    torch.testing.assert_close(module(x, boxes), roi_pool(x, boxes, 7, 0.0625))
    with pytest.raises(ValueError, match="boxes"):
        roi_pool(x, torch.zeros(2, 4), 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_pool(x, boxes, (0, 2))
    with pytest.raises(ValueError, match="output_size"):
        RoIPool(-1)
