"""Argument checking and small shared helpers for the RoI operators.

Every RoI operator (``roi_align``, ``roi_pool``, ``roi_warp``) takes the same ``input``,
``boxes`` and ``output_size`` arguments as torchvision's; this module validates them (raising
``ValueError`` naming the argument), converts the list-of-boxes form to ``[K, 5]`` rois, and
holds the helpers the operators share: the geometry dtype, C-style rounding and RoI chunking.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

BoxesLike = Tensor | Sequence[Tensor]

# Upper bound on the elements of one padded [k, PH, PW, taps] index tensor. RoIs are processed
# in chunks so that no intermediate exceeds it (about 100 MB of temporaries).
CHUNK_ELEMENTS = 1 << 22


def check_input(input: Tensor) -> None:
    """Raises ValueError unless ``input`` is a floating-point [N, C, H, W] tensor."""
    if not isinstance(input, Tensor) or input.dim() != 4:
        shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"input: expected a Tensor[N, C, H, W], got {shape}")
    if not input.is_floating_point():
        raise ValueError(f"input: expected a floating-point tensor, got {input.dtype}")


def pair_output_size(output_size: int | Sequence[int]) -> tuple[int, int]:
    """``output_size`` (int or (h, w)) -> (PH, PW), both positive."""
    if isinstance(output_size, int):
        size = (output_size, output_size)
    elif isinstance(output_size, Sequence) and len(output_size) == 2:
        size = (output_size[0], output_size[1])
    else:
        raise ValueError(f"output_size: expected an int or (h, w), got {output_size!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"output_size: expected positive ints, got {output_size!r}")
    return size


def boxes_to_rois(boxes: BoxesLike, input: Tensor) -> Tensor:
    """Brings ``boxes`` to the [K, 5] form (batch index, x1, y1, x2, y2).

    Args:
        boxes: Tensor[K, 5], or a list of Tensor[L_i, 4] with one entry per image.
        input: the [N, C, H, W] feature map (gives the device).

    Returns:
        [K, 5] rois, detached, in ``geometry_dtype(input.dtype)``, on ``input``'s device.
    """
    dtype = geometry_dtype(input.dtype)
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes: expected a Tensor[K, 5], got shape {tuple(boxes.shape)}")
        return boxes.detach().to(device=input.device, dtype=dtype)
    if not isinstance(boxes, Sequence) or not all(isinstance(b, Tensor) for b in boxes):
        raise ValueError("boxes: expected a Tensor[K, 5] or a list of Tensor[L, 4]")
    rois = []
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}]: expected a Tensor[L, 4], got shape {tuple(b.shape)}")
        b = b.detach().to(device=input.device, dtype=dtype)
        rois.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))  # [L_i, 5]
    if not rois:
        return torch.zeros((0, 5), device=input.device, dtype=dtype)
    return torch.cat(rois, dim=0)


def geometry_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype for coordinates and weights: the input's for fp32/fp64, fp32 for fp16/bf16.

    torchvision's CPU kernels do their coordinate arithmetic in the input dtype; doing the same
    for fp32/fp64 reproduces their floor/ceil/round decisions bit for bit.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def index_dtype(num_rows: int) -> torch.dtype:
    """int32 for row indices when they fit (half the memory traffic, faster sorts), else int64."""
    return torch.int32 if num_rows < 2**31 else torch.int64


def round_half_away(x: Tensor) -> Tensor:
    """C's ``round``: halves go away from zero (torch.round rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def roi_chunks(num_rois: int, elements_per_roi: int) -> list[tuple[int, int]]:
    """Splits ``range(num_rois)`` into [start, stop) pieces of at most ``CHUNK_ELEMENTS``.

    Args:
        num_rois: K.
        elements_per_roi: size of one RoI's slice of the padded intermediate.
    """
    step = max(1, CHUNK_ELEMENTS // max(1, elements_per_roi))
    return [(k, min(k + step, num_rois)) for k in range(0, num_rois, step)]


def cost_chunks(costs: Tensor) -> list[tuple[int, int]]:
    """Splits RoIs into consecutive [start, stop) pieces of about ``CHUNK_ELEMENTS`` total cost.

    Args:
        costs: [K] int64 size of each RoI's share of an intermediate (K >= 1).

    Returns:
        Pieces covering ``range(K)``; a piece overshoots the budget by at most one RoI.
    """
    starts = costs.cumsum(0) - costs  # [K], where each RoI's share begins
    piece = torch.div(starts, CHUNK_ELEMENTS, rounding_mode="floor")  # [K]
    cuts = (torch.nonzero(piece[1:] != piece[:-1]).flatten() + 1).tolist()
    bounds = [0, *cuts, costs.numel()]
    return list(zip(bounds[:-1], bounds[1:]))


def empty_output(input: Tensor, output_size: tuple[int, int]) -> Tensor:
    """The [0, C, PH, PW] result for K = 0, still attached to ``input``'s graph (zero grad)."""
    shape = (0, input.shape[1], *output_size)
    return input.new_zeros(shape) + input[:0].sum()  # [0, C, PH, PW]


def to_channels_last_table(input: Tensor, dtype: torch.dtype) -> Tensor:
    """[N, C, H, W] -> [N*H*W, C] contiguous rows of channels, in ``dtype`` (one copy at most).

    Free when ``input`` is already channels-last in ``dtype``. Differentiable.
    """
    n, c, h, w = input.shape
    nhwc = input.to(dtype=dtype, memory_format=torch.channels_last).permute(0, 2, 3, 1)
    return nhwc.reshape(n * h * w, c).contiguous()  # [N*H*W, C]
