"""Random weights that keep activations sane: for parity checks against reference models.

Comparing two implementations with the same weights proves little when the weights are a
fresh initialisation (zero biases, identity norms hide transposed or missing terms). This
gives every parameter and normalisation statistic of any ``nn.Module`` (ours or a reference
model) seeded random values instead.
"""

from __future__ import annotations

import torch
from torch import nn


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every parameter and norm statistic random values that keep activations sane.

    Convs and linears get fan-in-scaled normal weights and random biases; norm layers get
    random scales, shifts, means and (positive) variances. Deterministic for a seed.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            bias = getattr(module, "bias", None)
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                fan_in = (
                    weight[0].numel()
                    if not isinstance(module, nn.ConvTranspose2d)
                    else (
                        weight.shape[0] * weight[0, 0].numel() / module.stride[0] / module.stride[1]
                    )
                )
                weight.copy_(normal(weight.shape, (1.0 / fan_in) ** 0.5))
                if bias is not None:
                    bias.copy_(normal(bias.shape, 0.1))
            elif hasattr(module, "running_mean") and hasattr(module, "running_var"):
                weight.copy_(0.2 + 0.4 * torch.rand(weight.shape, generator=gen))
                bias.copy_(normal(bias.shape, 0.1))
                module.running_mean.copy_(normal(module.running_mean.shape, 0.1))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
            elif isinstance(module, nn.GroupNorm):
                weight.copy_(0.5 + torch.rand(weight.shape, generator=gen))
                bias.copy_(normal(bias.shape, 0.1))
    return model
