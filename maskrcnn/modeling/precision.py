"""Precision: one vocabulary and one resolver for training and inference.

A precision setting is one of :data:`PRECISIONS` (defined with :func:`check_precision` in
:mod:`maskrcnn.config`, the lowest layer, so that ``ModelConfig.precision`` is checked there):

* ``"fp32"``: full precision (no autocast).
* ``"bf16"``: ``torch.autocast`` with bfloat16, on the CPU or CUDA.
* ``"fp16"``: ``torch.autocast`` with float16, CUDA only (training adds a gradient scaler).
* ``"auto"``: fp16 on CUDA, bf16 on a CPU that computes bf16 natively, fp32 elsewhere.

:func:`resolve_precision` turns a setting into what runs on a device. Where the CPU has
neither AVX-512 BF16 nor AMX, bf16 is emulated and slower than fp32, so ``"bf16"`` falls back
to fp32 there, with a warning, for training and inference alike.

Under bf16 or fp16 the convolutions and matrix products (backbone, FPN, RPN head, box and
mask heads) run in low precision; everything that needs more mantissa bits stays fp32: the
heads' outputs are cast to fp32 before box decoding, NMS, softmax and mask sigmoid.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Literal

import torch

from maskrcnn.config import PRECISIONS, Precision, check_precision

__all__ = [
    "PRECISIONS",
    "Precision",
    "ResolvedPrecision",
    "autocast",
    "autocast_dtype",
    "check_precision",
    "cpu_has_fast_bf16",
    "resolve_precision",
]

ResolvedPrecision = Literal["fp32", "bf16", "fp16"]

_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """True where this CPU multiplies bf16 natively (AVX-512 BF16 or AMX tiles)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: torch.device) -> ResolvedPrecision:
    """The precision that runs on ``device`` for a setting.

    Raises:
        ValueError: an unknown setting, or ``"fp16"`` on a device other than CUDA.
    """
    precision = check_precision(precision)
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs CUDA; use 'bf16' (or 'auto') on the CPU")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        warnings.warn(
            "this CPU has no AVX-512 BF16 or AMX: running in fp32 instead of bf16",
            stacklevel=3,
        )
        return "fp32"
    return precision


def autocast_dtype(precision: ResolvedPrecision) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: full precision)."""
    return _DTYPES.get(precision)


def autocast(
    precision: ResolvedPrecision, device: torch.device
) -> contextlib.AbstractContextManager[object]:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
