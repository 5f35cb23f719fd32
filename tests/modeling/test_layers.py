"""Small layers: the fused inference linear and convolution, norm folding inside ConvNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskrcnn.modeling.layers import (
    ConvNorm,
    _ConvAddReLU,
    _fused_conv_args,
    conv_relu,
    conv_stack,
    linear_relu,
)
from maskrcnn.modeling.precision import cpu_has_fast_bf16


def test_linear_relu_equals_relu_of_linear_with_and_without_grad():
    torch.manual_seed(0)
    fc = nn.Linear(300, 50)
    x = torch.randn(20, 300)
    expected = torch.relu(fc(x)).detach()
    with torch.no_grad():
        torch.testing.assert_close(linear_relu(x, fc), expected, rtol=1e-5, atol=1e-5)
    out = linear_relu(x, fc)  # training path: autograd must reach the weights
    out.sum().backward()
    assert fc.weight.grad is not None and fc.weight.grad.abs().sum() > 0
    torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)


def test_convnorm_folds_frozen_and_eval_batchnorm_exactly_enough():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 11)
    for kind in ("frozen_bn", "bn"):
        layer = ConvNorm(8, 16, kernel_size=3, norm=kind).eval()
        with torch.no_grad():
            layer.norm.weight.uniform_(0.5, 1.5)
            layer.norm.bias.normal_()
            layer.norm.running_mean.normal_()
            layer.norm.running_var.uniform_(0.5, 2.0)
            assert layer.folded_weight_and_bias() is not None
            torch.testing.assert_close(layer(x), layer.norm(layer.conv(x)), rtol=1e-5, atol=1e-5)
    training_bn = ConvNorm(8, 16, kernel_size=3, norm="bn").train()
    assert training_bn.folded_weight_and_bias() is None  # batch statistics: no folding


def test_conv_stack_maps_in_channels_to_out_channels():
    convs = conv_stack(8, num_convs=3, out_channels=32, norm="gn")
    shapes = [(c.conv.in_channels, c.conv.out_channels) for c in convs]
    assert shapes == [(8, 32), (32, 32), (32, 32)]
    assert all(c.conv.kernel_size == (3, 3) and c.conv.padding == (1, 1) for c in convs)
    assert isinstance(convs[0].norm, nn.GroupNorm)
    assert conv_stack(8, num_convs=0, out_channels=16, norm="none") == []


def _randomised(layer: ConvNorm) -> ConvNorm:
    with torch.no_grad():
        for name, buffer in layer.norm.named_buffers():
            if name in ("weight", "running_var"):
                buffer.uniform_(0.5, 1.5)
            elif name in ("bias", "running_mean"):
                buffer.normal_()
        for p in layer.norm.parameters():
            p.normal_()
    return layer.eval()


def _reference(x, layer, residual):
    """relu(layer(x) + residual) in float64, the plain layers."""
    out = layer.double()(x.double())
    out = out if residual is None else out + residual.double()
    layer.float()
    return torch.relu(out)


@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "none"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize(
    "kernel_size, stride, groups, channels_last",
    [(3, 1, 1, True), (1, 2, 1, False), (3, 2, 4, True), (7, 2, 1, False)],
)
def test_conv_relu_fused_inference_equals_the_layers(
    norm, residual, kernel_size, stride, groups, channels_last
):
    torch.manual_seed(0)
    layer = _randomised(
        ConvNorm(8, 16, kernel_size=kernel_size, stride=stride, groups=groups, norm=norm)
    )
    x = torch.randn(2, 8, 13, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out_hw = ((13 - 1) // stride + 1, (10 - 1) // stride + 1)
    extra = torch.randn(2, 16, *out_hw) if residual else None
    kept = None if extra is None else extra.clone()
    with torch.no_grad():
        assert _fused_conv_args(x, layer) is not None  # the oneDNN path is the one tested
        want = _reference(x, layer, extra)
        got = conv_relu(x, layer, residual=extra)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    if extra is not None:
        assert torch.equal(extra, kept)  # the residual is read, never written


def test_conv_relu_bf16_autocast_rounds_like_autocast():
    if not cpu_has_fast_bf16():
        pytest.skip("bf16 autocast is emulated (slow) on this CPU")
    torch.manual_seed(0)
    layer = _randomised(ConvNorm(32, 64, kernel_size=3, norm="frozen_bn"))
    x = torch.randn(2, 32, 20, 20).contiguous(memory_format=torch.channels_last)
    extra = torch.randn(2, 64, 20, 20).bfloat16()
    with torch.no_grad():
        want = _reference(x, layer, extra)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _fused_conv_args(x, layer) is not None
            got = conv_relu(x, layer, residual=extra)
            plain = torch.relu(layer(x) + extra)
    assert got.dtype == torch.bfloat16
    # Fused, the sum is rounded to bf16 once; the plain layers round twice.
    fused_error = (got.double() - want).abs().max()
    plain_error = (plain.double() - want).abs().max()
    assert fused_error <= plain_error * 1.01
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("norm", ["frozen_bn", "none"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("kernel_size, stride, groups", [(3, 1, 1), (1, 2, 1), (3, 2, 4)])
def test_conv_relu_fused_training_gradients_equal_the_layers(
    norm, residual, kernel_size, stride, groups
):
    """The fused op's autograd (fp32): values and every gradient against the layers in fp64."""
    torch.manual_seed(0)
    layer = _randomised(
        ConvNorm(8, 16, kernel_size=kernel_size, stride=stride, groups=groups, norm=norm)
    )
    x = torch.randn(2, 8, 13, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
    out_hw = ((13 - 1) // stride + 1, (10 - 1) // stride + 1)
    extra = torch.randn(2, 16, *out_hw).requires_grad_() if residual else None
    folded = layer.folded_weight_and_bias()
    weight, bias = (layer.conv.weight, layer.conv.bias) if folded is None else folded
    conv = layer.conv
    geometry = (conv.padding, conv.stride, conv.dilation, conv.groups)
    out = _ConvAddReLU.apply(x, weight, bias, extra, geometry)
    grad_out = torch.randn_like(out)
    params = [p for p in layer.parameters()]
    inputs = [x, *([extra] if residual else []), *params]
    got = torch.autograd.grad(out, inputs, grad_out)

    x64 = x.detach().double().requires_grad_()
    extra64 = None if extra is None else extra.detach().double().requires_grad_()
    layer64 = layer.double()
    want_out = layer64(x64)
    want_out = torch.relu(want_out if extra64 is None else want_out + extra64)
    inputs64 = [x64, *([extra64] if residual else []), *layer64.parameters()]
    want = torch.autograd.grad(want_out, inputs64, grad_out.double())
    layer.float()
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


def test_conv_relu_trains_fused_in_bf16_and_plain_in_fp32():
    torch.manual_seed(0)
    layer = _randomised(ConvNorm(32, 64, kernel_size=3, norm="frozen_bn"))
    layer.conv.weight.requires_grad_(True)
    x = torch.randn(2, 32, 12, 12).contiguous(memory_format=torch.channels_last)
    extra = torch.randn(2, 64, 12, 12)
    x.requires_grad_(True)
    out = conv_relu(x, layer, residual=extra)
    assert type(out.grad_fn).__name__ != "_ConvAddReLUBackward"  # fp32 training: plain ops
    if not cpu_has_fast_bf16():
        return
    grad_out = torch.randn(2, 64, 12, 12)
    x64, extra64 = x.detach().double().requires_grad_(), extra.double().requires_grad_()
    want = torch.relu(layer.double()(x64) + extra64)
    want_grads = torch.autograd.grad(want, [x64, layer.conv.weight, extra64], grad_out.double())
    layer.float()
    errors = {}
    for name in ("fused", "plain"):
        x_, extra_ = x.detach().requires_grad_(), extra.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if name == "fused":
                out = conv_relu(x_, layer, residual=extra_)
                assert type(out.grad_fn).__name__ == "_ConvAddReLUBackward"
            else:
                out = torch.relu(layer(x_) + extra_)
        grads = torch.autograd.grad(out, [x_, layer.conv.weight, extra_], grad_out)
        # Relative L2 error: a ReLU whose input rounds across zero flips one element's gradient
        # whole, in either path, so the largest error says little.
        errors[name] = [
            ((g.double() - w).norm() / w.norm()).item()
            for g, w in zip(grads, want_grads, strict=True)
        ]
    for fused_error, plain_error in zip(errors["fused"], errors["plain"], strict=True):
        # The oracle is autocast's own bf16 path (itself ~2 % from fp64 here): no worse than it.
        assert fused_error <= 1.5 * plain_error + 1e-3, errors


def test_conv_relu_falls_back_where_the_norm_does_not_fold():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 7, 7, requires_grad=True)
    group_norm = _randomised(ConvNorm(4, 8, kernel_size=3, norm="gn", gn_groups=2))
    live_bn = ConvNorm(4, 8, kernel_size=3, norm="bn").train()
    for layer in (group_norm, live_bn):
        assert _fused_conv_args(x, layer) is None  # GroupNorm, BatchNorm's batch statistics
    out = conv_relu(x, live_bn, residual=torch.randn(1, 8, 7, 7))
    out.sum().backward()
    assert x.grad is not None and live_bn.conv.weight.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(
            conv_relu(x, group_norm), torch.relu(group_norm(x)), rtol=0, atol=0
        )
