"""roi_align / RoIAlign against torchvision's CPU kernel (avg) and a loop reference (max)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from maskrcnn.ops import RoIAlign, _bag_gather, _roi_args, roi_align

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def random_boxes(
    gen: torch.Generator,
    k: int,
    n: int,
    h: int,
    w: int,
    scale: float,
    dtype: torch.dtype,
    inverted: bool = True,
) -> torch.Tensor:
    """[k, 5] boxes in image coordinates: mostly inside, some partly or wholly outside the map,
    one of zero size, one inverted (x2 < x1, unless ``inverted=False``), over ``n`` images."""
    img_h, img_w = h / scale, w / scale
    x1 = torch.rand(k, generator=gen, dtype=torch.float64) * img_w * 1.2 - 0.1 * img_w
    y1 = torch.rand(k, generator=gen, dtype=torch.float64) * img_h * 1.2 - 0.1 * img_h
    bw = torch.rand(k, generator=gen, dtype=torch.float64) * img_w * 0.8
    bh = torch.rand(k, generator=gen, dtype=torch.float64) * img_h * 0.8
    batch = torch.randint(0, n, (k,), generator=gen).double()
    boxes = torch.stack([batch, x1, y1, x1 + bw, y1 + bh], dim=1)
    boxes[0, 3:] = boxes[0, 1:3]  # zero size
    boxes[1, 1:] = torch.tensor([-3.0, -3.0, -1.5, -1.2]) * img_w  # wholly outside (top-left)
    boxes[2, 1:] = torch.tensor([1.1 * img_w, 0.2 * img_h, 1.5 * img_w, 0.9 * img_h])  # right
    if inverted:
        boxes[3, 1:] = torch.tensor([0.6 * img_w, 0.5 * img_h, 0.3 * img_w, 0.6 * img_h])
    boxes[4, 1:] = torch.tensor([-0.3 * img_w, -0.2 * img_h, 1.3 * img_w, 1.4 * img_h])  # covers
    return boxes.to(dtype)


def compare_with_torchvision(x, boxes, size, scale, sr, aligned, tol, gen):
    """Forward and input-gradient of ours vs torchvision's kernel, max abs difference <= tol."""
    x_ours = x.detach().clone().requires_grad_()
    x_tv = x.detach().clone().requires_grad_()
    ours = roi_align(x_ours, boxes, size, scale, sr, aligned)
    ref = torchvision.ops.roi_align(x_tv, boxes, size, scale, sr, aligned)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=tol)
    grad = torch.randn(ref.shape, generator=gen, dtype=ref.dtype)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_tv.grad, rtol=0, atol=tol)
    assert ref.abs().sum() > 0  # the comparison is not vacuous


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
def test_matches_torchvision(dtype, aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(sampling_ratio + 10 * aligned)
    # torchvision's kernel fails ("cannot create std::vector") on an inverted box when aligned
    # and adaptive (negative sample count); see test_inverted_box_aligned_adaptive.
    inverted = not (aligned and sampling_ratio <= 0)
    for scale, size in [(1.0, (3, 4)), (0.5, (5, 2)), (0.25, 4)]:
        x = torch.randn(2, 3, 11, 14, generator=gen, dtype=dtype)
        boxes = random_boxes(gen, 24, 2, 11, 14, scale, dtype, inverted)
        compare_with_torchvision(x, boxes, size, scale, sampling_ratio, aligned, TOL[dtype], gen)


@pytest.mark.parametrize("aligned", [False, True])
def test_zero_size_boxes(aligned):
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    boxes = torch.tensor([[0, 3.0, 3.0, 3.0, 3.0], [0, 2.5, 4.0, 2.5, 6.0]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for sr in (-1, 2):
        x_ours = x.clone().requires_grad_()
        ours = roi_align(x_ours, boxes, 2, 1.0, sr, aligned)
        torch.testing.assert_close(
            ours, torchvision.ops.roi_align(x, boxes, 2, 1.0, sr, aligned), rtol=0, atol=1e-10
        )
        if aligned and sr == -1:  # detectron2's test_empty_box: no samples, zero output and grad
            assert ours.abs().sum() == 0
            ours.sum().backward()
            assert x_ours.grad.abs().sum() == 0
        elif not aligned:  # forced to 1x1: a real average
            assert (ours.abs() > 0).all()
    compare_with_torchvision(x, boxes, (2, 3), 1.0, 2, aligned, 1e-10, gen)


def test_inverted_box_aligned_adaptive():
    """x2 < x1, aligned=True, adaptive sampling: no samples, so zeros (torchvision raises)."""
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    boxes = torch.tensor([[0, 5.0, 2.0, 3.0, 6.0], [0, 1.0, 6.0, 5.0, 2.0]])
    out = roi_align(x, boxes, 2, 1.0, -1, True)
    assert out.shape == (2, 2, 2, 2) and out.abs().sum() == 0
    out.sum().backward()
    assert x.grad.abs().sum() == 0


def test_nan_box_gives_zeros():
    """The kernel's rule sends NaN samples to 0 (torchvision itself segfaults on such a box)."""
    x = torch.randn(1, 2, 6, 6)
    boxes = torch.tensor([[0, float("nan"), 1.0, 3.0, 4.0], [0, 1.0, 1.0, 4.0, 4.0]])
    for aligned in (False, True):
        ours = roi_align(x, boxes, 2, 1.0, 2, aligned)
        assert ours[0].abs().sum() == 0
        ref = torchvision.ops.roi_align(x, boxes[1:], 2, 1.0, 2, aligned)
        torch.testing.assert_close(ours[1:], ref, rtol=0, atol=1e-6)


def test_empty_boxes_and_gradient():
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = roi_align(x, torch.zeros(0, 5), (2, 3), 1.0, 2, True)
    assert out.shape == (0, 3, 2, 3) and out.dtype == x.dtype
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    out = roi_align(x, [torch.zeros(0, 4), torch.zeros(0, 4)], 2)
    assert out.shape == (0, 3, 2, 2)


def test_list_of_boxes_equals_tensor_form():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 12, 10, generator=gen)
    per_image = [random_boxes(gen, 6 + i, 1, 12, 10, 0.5, torch.float32)[:, 1:] for i in range(3)]
    per_image[1] = per_image[1][:0]  # an image without boxes
    rois = torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(per_image)]
    )
    ours = roi_align(x, per_image, (3, 2), 0.5, 2, True)
    torch.testing.assert_close(ours, roi_align(x, rois, (3, 2), 0.5, 2, True), rtol=0, atol=0)
    ref = torchvision.ops.roi_align(x, per_image, (3, 2), 0.5, 2, True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_non_contiguous_and_channels_last_input():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(4, 14, 3, 13, generator=gen, dtype=torch.float64)
    x = base.permute(0, 2, 3, 1)[1:3, :, 1:12, :]  # [2, 3, 11, 13], non-contiguous
    assert not x.is_contiguous()
    boxes = random_boxes(gen, 20, 2, 11, 13, 1.0, torch.float64)
    compare_with_torchvision(x, boxes, (2, 3), 1.0, 2, True, 1e-10, gen)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    compare_with_torchvision(x_cl, boxes, (2, 3), 1.0, -1, False, 1e-10, gen)


def test_gradient_of_sum_and_of_channels_last_grad():
    """Broadcast (stride-0) and channels-last grad_outputs reach the input correctly."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 9, 9, generator=gen, dtype=torch.float64)
    boxes = random_boxes(gen, 12, 2, 9, 9, 1.0, torch.float64)
    grads = []
    for fn in (roi_align, torchvision.ops.roi_align):
        x_req = x.clone().requires_grad_()
        fn(x_req, boxes, (2, 3), 1.0, 2, False).sum().backward()
        grads.append(x_req.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-10)
    x_req = x.clone().requires_grad_()
    out = roi_align(x_req, boxes, (2, 3), 1.0, 2, False)
    grad = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    out.backward(grad.contiguous(memory_format=torch.channels_last))
    x_tv = x.clone().requires_grad_()
    torchvision.ops.roi_align(x_tv, boxes, (2, 3), 1.0, 2, False).backward(grad)
    torch.testing.assert_close(x_req.grad, x_tv.grad, rtol=0, atol=1e-10)


def test_multiple_chunks(monkeypatch):
    """Tiny chunk budgets: RoIs are processed in many pieces, results unchanged."""
    monkeypatch.setattr(_roi_args, "CHUNK_ELEMENTS", 200)
    monkeypatch.setattr(_bag_gather, "OUTPUT_CHUNK_ELEMENTS", 50)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    boxes = random_boxes(gen, 30, 2, 16, 16, 1.0, torch.float64, inverted=False)
    compare_with_torchvision(x, boxes, (3, 3), 1.0, 0, True, 1e-10, gen)
    compare_with_torchvision(x, boxes, (3, 3), 1.0, 2, False, 1e-10, gen)
    x_max = x.clone().requires_grad_()
    out = roi_align(x_max, boxes, (3, 3), 1.0, 2, True, "max")
    out.backward(out)
    monkeypatch.undo()
    x_ref = x.clone().requires_grad_()
    ref = roi_align(x_ref, boxes, (3, 3), 1.0, 2, True, "max")
    ref.backward(ref)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(x_max.grad, x_ref.grad, rtol=0, atol=1e-12)


def test_large_adaptive_grid():
    """A box covering a large map at scale 1 needs many samples per bin."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 60, 70, generator=gen, dtype=torch.float64)
    boxes = torch.tensor([[0, -5.0, -3.0, 75.0, 66.0], [0, 10.0, 10.0, 11.0, 50.0]]).double()
    compare_with_torchvision(x, boxes, (2, 3), 1.0, -1, True, 1e-10, gen)


@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck(aligned):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    boxes = random_boxes(gen, 6, 2, 5, 6, 1.0, torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, boxes, (2, 3), 1.0, -1, aligned), x)
    assert torch.autograd.gradcheck(
        lambda t: roi_align(t, boxes, 2, 1.0, 2, aligned, reduction="max"), x
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_close_to_fp32(dtype):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 8, 20, 20, generator=gen)
    boxes = random_boxes(gen, 16, 2, 20, 20, 0.5, torch.float32)
    for reduction in ("avg", "max"):
        # Same (rounded) inputs, so only the low-precision computation and output differ.
        ref = roi_align(x.to(dtype).float(), boxes.to(dtype).float(), 4, 0.5, 2, True, reduction)
        low = roi_align(x.to(dtype), boxes.to(dtype), 4, 0.5, 2, True, reduction)
        assert low.dtype == dtype
        torch.testing.assert_close(low.float(), ref, rtol=1e-2, atol=1e-2)
    x_low = x.to(dtype).requires_grad_()
    roi_align(x_low, boxes, 4, 0.5, 2, True).sum().backward()
    assert x_low.grad.dtype == dtype and x_low.grad.abs().sum() > 0


def bilinear_ref(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """One sample of torchvision's ``bilinear_interpolate`` (img [C, H, W] -> [C]), in Python."""
    h, w = img.shape[1:]
    if not (-1.0 <= y <= h and -1.0 <= x <= w):
        return img.new_zeros(img.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * img[:, y0, x0]
        + hy * lx * img[:, y0, x1]
        + ly * hx * img[:, y1, x0]
        + ly * lx * img[:, y1, x1]
    )


def roi_align_max_ref(x, boxes, size, scale, sr, aligned):
    """The max variant by plain loops (autograd gives the gradient of the arg-max sample)."""
    ph_n, pw_n = size
    outs = []
    for b, x1, y1, x2, y2 in boxes.tolist():
        off = 0.5 if aligned else 0.0
        xs, ys, xe, ye = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        rw, rh = xe - xs, ye - ys
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph_n, rw / pw_n
        gh = sr if sr > 0 else max(int(torch.tensor(bh).ceil()), 0)
        gw = sr if sr > 0 else max(int(torch.tensor(bw).ceil()), 0)
        bins = []
        for ph in range(ph_n):
            for pw in range(pw_n):
                samples = [
                    bilinear_ref(x[int(b)], ys + ph * bh + (iy + 0.5) * bh / gh,
                                 xs + pw * bw + (ix + 0.5) * bw / gw)
                    for iy in range(gh)
                    for ix in range(gw)
                ]  # fmt: skip
                bins.append(
                    torch.stack(samples).max(0).values if samples else x.new_zeros(x.shape[1])
                )
        outs.append(torch.stack(bins, 1).view(-1, ph_n, pw_n))
    return torch.stack(outs)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_max_matches_loop_reference(aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(7 + aligned)
    x = torch.randn(2, 3, 9, 10, generator=gen, dtype=torch.float64)
    boxes = random_boxes(gen, 9, 2, 9, 10, 0.5, torch.float64)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = roi_align(x_ours, boxes, (2, 3), 0.5, sampling_ratio, aligned, reduction="max")
    ref = roi_align_max_ref(x_ref, boxes, (2, 3), 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    grad = torch.randn(ref.shape, generator=gen, dtype=ref.dtype)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=0, atol=1e-10)
    avg = roi_align(x, boxes, (2, 3), 0.5, sampling_ratio, aligned)
    assert (ours >= avg - 1e-12).all() and (ours > avg + 1e-6).any()


def test_module_and_repr():
    module = RoIAlign((7, 5), spatial_scale=0.25, sampling_ratio=2, aligned=True, reduction="max")
    assert repr(module) == (
        "RoIAlign(output_size=(7, 5), spatial_scale=0.25, sampling_ratio=2, aligned=True, "
        "reduction='max')"
    )
    x = torch.randn(1, 2, 10, 10)
    boxes = torch.tensor([[0, 2.0, 3.0, 30.0, 25.0]])
    torch.testing.assert_close(module(x, boxes), roi_align(x, boxes, (7, 5), 0.25, 2, True, "max"))
    assert repr(RoIAlign(3)) == (
        "RoIAlign(output_size=(3, 3), spatial_scale=1.0, sampling_ratio=-1, aligned=False, "
        "reduction='avg')"
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"boxes": torch.zeros(3, 4)}, "boxes"),
        ({"boxes": [torch.zeros(3, 5)]}, "boxes"),
        ({"boxes": torch.zeros(5)}, "boxes"),
        ({"output_size": 0}, "output_size"),
        ({"output_size": (3, -1)}, "output_size"),
        ({"output_size": (3, 3, 3)}, "output_size"),
        ({"reduction": "sum"}, "reduction"),
        ({"input": torch.zeros(2, 5, 5)}, "input"),
    ],
)
def test_bad_arguments(kwargs, name):
    args = {"input": torch.zeros(1, 2, 5, 5), "boxes": torch.zeros(1, 5), "output_size": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        roi_align(**args)
    if name in ("output_size", "reduction"):
        with pytest.raises(ValueError, match=name):
            RoIAlign(args["output_size"], reduction=args.get("reduction", "avg"))
