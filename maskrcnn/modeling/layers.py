"""Small building blocks shared by every stage: normalisation layers and conv + norm.

Every convolution in the model is a :class:`ConvNorm` (``.conv`` then ``.norm``), so the state
dict reads the same way everywhere (``<name>.conv.weight``, ``<name>.norm.running_mean``) and a
norm kind is one config field. The activation is applied by the caller.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import NormKind


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (buffers, never trained).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, computed as one
    scale and shift. Stores weight, bias, running_mean and running_var as buffers, with no
    ``num_batches_tracked``, as torchvision's and detectron2's do.
    """

    weight: Tensor  # [C]
    bias: Tensor  # [C]
    running_mean: Tensor  # [C]
    running_var: Tensor  # [C]

    def __init__(self, num_features: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        errors: list[str],
    ) -> None:
        # Checkpoints saved from a trainable BatchNorm2d carry a counter we have no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """Returns ``(scale, shift)``, each [C], such that ``y = x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return scale, shift

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C, H, W] -> [N, C, H, W]."""
        scale, shift = self.scale_and_shift()
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def make_norm(
    kind: NormKind, channels: int, *, eps: float = 1e-5, gn_groups: int = 32
) -> nn.Module:
    """Builds the normalisation layer named by ``kind`` ("none" gives ``nn.Identity``)."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels, eps=eps)
    if kind == "bn":
        return nn.BatchNorm2d(channels, eps=eps)
    if kind == "gn":
        return nn.GroupNorm(gn_groups, channels, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm kind {kind!r}")


class ConvNorm(nn.Module):
    """A 2-D convolution followed by a normalisation layer (no activation).

    The convolution has a bias only when there is no normalisation after it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        norm: NormKind = "none",
        eps: float = 1e-5,
        gn_groups: int = 32,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=norm == "none",
        )
        self.norm = make_norm(norm, out_channels, eps=eps, gn_groups=gn_groups)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C_in, H, W] -> [N, C_out, H', W']."""
        folded = self.folded_weight_and_bias()
        if folded is None:
            out: Tensor = self.norm(self.conv(x))
            return out
        weight, bias = folded
        out = self.conv._conv_forward(x, weight, bias)
        return out

    def folded_weight_and_bias(self) -> tuple[Tensor, Tensor] | None:
        """Conv weight and bias with an affine norm folded in, or None if the norm is not affine.

        FrozenBatchNorm2d, and BatchNorm2d in eval mode, are a per-channel scale and shift of
        the conv's output, so ``norm(conv(x)) == conv'(x)`` with ``w' = w * scale`` and
        ``b' = b * scale + shift``. Folding on every call (the weights are small) saves two
        passes over each feature map and never goes stale after a weight update.
        """
        norm = self.norm
        if isinstance(norm, FrozenBatchNorm2d):
            scale, shift = norm.scale_and_shift()
        elif (
            isinstance(norm, nn.BatchNorm2d)
            and not norm.training
            and norm.track_running_stats
            and norm.running_mean is not None
            and norm.running_var is not None
        ):
            scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
            shift = norm.bias - norm.running_mean * scale
        else:
            return None
        weight = self.conv.weight * scale.reshape(-1, 1, 1, 1)
        bias = shift if self.conv.bias is None else self.conv.bias * scale + shift
        return weight, bias


def conv_relu(x: Tensor, layer: nn.Module, *, residual: Tensor | None = None) -> Tensor:
    """``relu(layer(x) + residual)`` (``relu(layer(x))`` without a residual).

    In CPU inference one oneDNN convolution with the addition and the ReLU as post-ops (norm
    folded in, as :meth:`ConvNorm.forward` folds it): no separate passes over the output for
    the ReLU and the residual add, which at bf16 speeds cost as much as a third of the
    convolutions themselves. In bf16 training the same fused forward runs, with ReLU's and the
    convolution's own backward (the ReLU's mask from the saved output, as ``relu`` does). Not
    while tracing (no ONNX form); under bf16 autocast its inputs are cast as autocast would
    cast them. Elsewhere (GroupNorm, BatchNorm in training, CUDA), the plain layers.

    Args:
        x: [N, C_in, H, W].
        layer: the convolution (and norm): a :class:`ConvNorm` (any other module runs as is).
        residual: [N, C_out, H', W'] added before the ReLU, or None.

    Returns:
        [N, C_out, H', W'].
    """
    fused = _fused_conv_args(x, layer) if isinstance(layer, ConvNorm) else None
    if fused is not None and fused[0].dtype == torch.float32 and _needs_grad(x, residual, *fused):
        # fp32 training keeps the plain ops: at one image oneDNN's fused kernel rounds unlike
        # its kernel for two (2e-6), and DDP over one-image ranks is to match one process.
        fused = None
    if fused is None:
        out: Tensor = layer(x)
        out = out if residual is None else out.add_(residual)
        return F.relu(out, inplace=True)
    x, weight, bias = fused
    assert isinstance(layer, ConvNorm)
    conv = layer.conv
    padding = conv.padding
    assert not isinstance(padding, str)  # _fused_conv_args refused string padding
    geometry = (tuple(padding), tuple(conv.stride), tuple(conv.dilation), conv.groups)
    other = None if residual is None else residual.to(x.dtype)
    # Without a gradient to record, apply() runs the fused forward alone (no graph node).
    fused_out: Tensor = _ConvAddReLU.apply(x, weight, bias, other, geometry)
    return fused_out


# padding, stride, dilation, groups of a convolution
ConvGeometry = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _ConvAddReLU(torch.autograd.Function):
    """``relu(conv(x, weight, bias) + residual)`` as one oneDNN convolution with post-ops; its
    backward is ReLU's and the conv's own (``threshold_backward`` on the saved output, then
    ``convolution_backward``)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        residual: Tensor | None,
        geometry: ConvGeometry,
    ) -> Tensor:
        padding, stride, dilation, groups = geometry
        pointwise = torch.ops.mkldnn._convolution_pointwise
        args = (list(padding), list(stride), list(dilation), groups)
        y: Tensor
        if residual is None:
            y = pointwise(x, weight, bias, *args, "relu", [], "")
        else:
            y = pointwise.binary(x, residual, weight, bias, *args, "add", None, "relu", [], "")
        ctx.save_for_backward(x, weight, y)
        ctx.geometry = geometry
        ctx.has_bias = bias is not None
        ctx.has_residual = residual is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, y = ctx.saved_tensors
        padding, stride, dilation, groups = ctx.geometry
        grad = torch.ops.aten.threshold_backward(grad_y, y, 0)  # relu'(pre-activation)
        needs_x, needs_w, needs_b, needs_r = ctx.needs_input_grad[:4]
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            [weight.shape[0]] if ctx.has_bias else None,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0] * len(padding),
            groups,
            [needs_x, needs_w, needs_b and ctx.has_bias],
        )
        grad_r = grad if ctx.has_residual and needs_r else None
        return grad_x, grad_w, grad_b if ctx.has_bias else None, grad_r, None


def _fused_conv_args(x: Tensor, layer: ConvNorm) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """(input, weight, bias) for oneDNN's fused convolution, in its dtype, or None (not here)."""
    conv = layer.conv
    if (
        x.device.type != "cpu"
        or x.dim() != 4
        or torch.jit.is_tracing()  # type: ignore[no-untyped-call]  # no ONNX form
        or torch.jit.is_scripting()
        or conv.padding_mode != "zeros"
        or isinstance(conv.padding, str)
        or not hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        or not torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    ):
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        if dtype != torch.bfloat16:
            return None
    elif x.dtype == torch.float32 and conv.weight.dtype == torch.float32:
        dtype = torch.float32
    else:
        return None
    if isinstance(layer.norm, nn.Identity):
        weight, bias = conv.weight, conv.bias
    else:
        folded = layer.folded_weight_and_bias()
        if folded is None:
            return None
        weight, bias = folded
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def conv_stack(
    in_channels: int, *, num_convs: int, out_channels: int, norm: NormKind
) -> list[ConvNorm]:
    """``num_convs`` 3x3 ConvNorms, the first from ``in_channels``, all to ``out_channels``.

    The conv tower of the RPN and RoI heads: [N, in_channels, H, W] -> [N, out_channels, H, W]
    with the caller's ReLU after each conv. Default-initialised (the caller sets the init).
    """
    return [
        ConvNorm(in_channels if i == 0 else out_channels, out_channels, kernel_size=3, norm=norm)
        for i in range(num_convs)
    ]


def freeze(module: nn.Module) -> nn.Module:
    """Stops gradients to every parameter of ``module`` and returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def linear_relu(x: Tensor, fc: nn.Linear) -> Tensor:
    """``relu(fc(x))``; on CPU fp32 inference through oneDNN's fused linear when available.

    PyTorch's fp32 ``F.linear`` on CPU goes to the BLAS library, which on some CPUs (AMD with
    MKL) runs at half of oneDNN's rate; the box head's 12544 x 1024 layer is the largest
    matrix product of the model. The oneDNN op has no autograd, so it is used only when no
    gradient is recorded and autocast is off, and not while tracing (ONNX export).
    """
    fused = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if (
        fused is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and fc.weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()  # type: ignore[no-untyped-call]  # no ONNX form
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    ):
        out: Tensor = fused(x, fc.weight, fc.bias, "relu", [], "")
        return out
    return F.relu(fc(x), inplace=True)
