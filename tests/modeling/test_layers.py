"""Small layers: the fused inference linear and norm folding inside ConvNorm."""

from __future__ import annotations

import torch
from torch import nn

from maskrcnn.modeling.layers import ConvNorm, conv_stack, linear_relu


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
