"""Random weights that keep activations sane: for parity checks against reference models.

Comparing two implementations with the same weights proves little when the weights are a
fresh initialisation (zero biases, identity norms hide transposed or missing terms). This
gives every parameter and normalisation statistic of any ``nn.Module`` (ours or a reference
model) seeded random values instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _tensor_attribute(module: nn.Module, name: str) -> Tensor | None:
    """``module.<name>`` if it is a parameter or buffer, else None (absent, or set to None)."""
    value = getattr(module, name, None)
    return value if isinstance(value, Tensor) else None


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every parameter and norm statistic random values that keep activations sane.

    Convs and linears get fan-in-scaled normal weights and random biases; norm layers (any
    module with ``running_mean`` and ``running_var``, and GroupNorm) get random scales,
    shifts, means and (positive) variances. Deterministic for a seed.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float) -> Tensor:
        return torch.randn(shape, generator=gen) * std

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                weight = module.weight
                if isinstance(module, nn.ConvTranspose2d):
                    # weight [C_in, C_out / groups, kH, kW]: fan-in C_in * kH * kW / stride^2
                    fan_in = (
                        weight.shape[0] * weight[0, 0].numel() / module.stride[0] / module.stride[1]
                    )
                else:
                    fan_in = weight[0].numel()
                weight.copy_(normal(weight.shape, (1.0 / fan_in) ** 0.5))
                if module.bias is not None:
                    module.bias.copy_(normal(module.bias.shape, 0.1))
                continue
            scale = _tensor_attribute(module, "weight")
            shift = _tensor_attribute(module, "bias")
            running_mean = _tensor_attribute(module, "running_mean")
            running_var = _tensor_attribute(module, "running_var")
            if running_mean is not None and running_var is not None:
                if scale is not None:
                    scale.copy_(0.2 + 0.4 * torch.rand(scale.shape, generator=gen))
                if shift is not None:
                    shift.copy_(normal(shift.shape, 0.1))
                running_mean.copy_(normal(running_mean.shape, 0.1))
                running_var.copy_(0.5 + torch.rand(running_var.shape, generator=gen))
            elif isinstance(module, nn.GroupNorm) and module.affine:
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(normal(module.bias.shape, 0.1))
    return model
