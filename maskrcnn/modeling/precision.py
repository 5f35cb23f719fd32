"""Inference precision: fp32, or bf16 autocast where the CPU computes bf16 natively.

bf16 runs the convolutions and matrix products (backbone, FPN, RPN head, box and mask heads)
in bfloat16 through ``torch.autocast``. Everything that needs more than bf16's 8 mantissa
bits stays fp32: the heads' outputs are cast to fp32 before box decoding, NMS, softmax and
mask sigmoid. Where the CPU has neither AVX-512 BF16 nor AMX, bf16 is emulated and slower,
so ``resolve_precision`` falls back to fp32 with a warning.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]


def cpu_has_fast_bf16() -> bool:
    """True where this CPU multiplies bf16 natively (AVX-512 BF16 or AMX tiles)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """The precision to run at on ``device``: bf16 only where it is fast."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        warnings.warn(
            "this CPU has no AVX-512 BF16 or AMX: running in fp32 instead of bf16",
            stacklevel=3,
        )
        return "fp32"
    return precision  # type: ignore[return-value]


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
