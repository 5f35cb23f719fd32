"""Each exportable op: onnxruntime's result equals the eager one, at sizes other than the
example's and with zero boxes."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from maskrcnn.export.onnx_ops import (
    OPSET,
    batched_nms_onnx,
    pad_to_multiple,
    resize_bilinear,
    resized_size,
    roi_align_single,
    topk_clamped,
)


def _session(module: nn.Module, example: tuple[Tensor, ...], dynamic: dict) -> ort.InferenceSession:
    buffer = io.BytesIO()
    names = [f"in{i}" for i in range(len(example))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            dynamic_axes=dynamic,
        )
    return ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, *inputs: Tensor) -> list[np.ndarray]:
    return session.run(None, {f"in{i}": x.numpy() for i, x in enumerate(inputs)})


class _Nms(nn.Module):
    def forward(self, boxes: Tensor, scores: Tensor, classes: Tensor) -> Tensor:
        return batched_nms_onnx(
            boxes, scores, classes, num_classes=3, iou_threshold=0.5, max_per_class=1000
        )


def _random_boxes(n: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 100
    wh = 5 + torch.rand(n, 2, generator=gen) * 40
    return torch.cat([xy, xy + wh], dim=1)


def test_batched_nms_matches_torchvision_and_accepts_no_boxes():
    example = (_random_boxes(20, 0), torch.rand(20), torch.randint(0, 3, (20,)))
    session = _session(_Nms(), example, {f"in{i}": {0: "n"} for i in range(3)})
    gen = torch.Generator().manual_seed(1)
    boxes = _random_boxes(300, 1)
    scores = torch.rand(300, generator=gen)
    classes = torch.randint(0, 3, (300,), generator=gen)
    expected = _Nms()(boxes, scores, classes)
    assert 0 < len(expected) < 300
    (keep,) = _run(session, boxes, scores, classes)
    assert keep.tolist() == expected.tolist()  # same boxes, best score first
    (empty,) = _run(session, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert empty.shape == (0,)


class _Align(nn.Module):
    def __init__(self, aligned: bool, sampling_ratio: int) -> None:
        super().__init__()
        self.aligned, self.sampling_ratio = aligned, sampling_ratio

    def forward(self, features: Tensor, boxes: Tensor) -> Tensor:
        return roi_align_single(
            features,
            boxes,
            output_size=7,
            spatial_scale=0.25,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )


@pytest.mark.parametrize(("aligned", "sampling_ratio"), [(True, 0), (False, 2)])
def test_roi_align_matches_ours_in_both_modes(aligned, sampling_ratio):
    module = _Align(aligned, sampling_ratio)
    example = (torch.rand(1, 4, 20, 24), _random_boxes(5, 0))
    dynamic = {"in0": {2: "h", 3: "w"}, "in1": {0: "k"}}
    session = _session(module, example, dynamic)
    features = torch.randn(1, 4, 31, 27)
    boxes = torch.cat([_random_boxes(40, 2), torch.tensor([[3.0, 4.0, 3.2, 4.1]])])  # tiny one
    (pooled,) = _run(session, features, boxes)
    torch.testing.assert_close(torch.from_numpy(pooled), module(features, boxes), atol=1e-5, rtol=0)
    (empty,) = _run(session, features, torch.zeros(0, 4))
    assert empty.shape == (0, 4, 7, 7)


class _Resize(nn.Module):
    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        size = resized_size(image, min_size=160, max_size=256)
        resized = resize_bilinear(image[None], size)
        return size, pad_to_multiple(resized, 32)


@pytest.mark.parametrize("size", [(123, 201), (250, 97), (40, 41), (300, 300)])
def test_resize_and_pad_follow_the_model_rule(size):
    session = _session(_Resize(), (torch.rand(3, 64, 80),), {"in0": {1: "h", 2: "w"}})
    image = torch.rand(3, *size)
    hw, padded = _run(session, image)
    expected_hw, expected = _Resize()(image)
    # floor(201 * (256 / 201)) is 256 in float64 (a float32 scale gives 255).
    assert hw.tolist() == expected_hw.tolist()
    assert padded.shape[-2] % 32 == 0 and padded.shape[-1] % 32 == 0
    # onnxruntime maps output to input pixels with out/in as the scale, PyTorch with in/out:
    # sample positions differ in the last float bits (up to ~5e-5 of the value range).
    torch.testing.assert_close(torch.from_numpy(padded), expected, atol=1e-4, rtol=0)


class _TopK(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return topk_clamped(x, 10)


def test_topk_takes_at_most_what_there_is():
    session = _session(_TopK(), (torch.rand(50),), {"in0": {0: "n"}})
    for n in (50, 7, 0):
        x = torch.randperm(n).float()
        values, indices = _run(session, x)
        expected_values, expected_indices = _TopK()(x)
        assert values.tolist() == expected_values.tolist()
        assert indices.tolist() == expected_indices.tolist()
