"""RoIPool (Fast R-CNN's quantised max pooling) in pure PyTorch.

Semantics of torchvision's CPU kernel (``roi_pool_kernel.cpp``), for an RoI
``(b, x1, y1, x2, y2)``, scale ``s`` and output ``PH x PW``::

    xs = round(x1*s); ys = round(y1*s); xe = round(x2*s); ye = round(y2*s)  # halves away from 0
    roi_w = max(xe - xs + 1, 1); roi_h = max(ye - ys + 1, 1)
    bin_h = roi_h / PH; bin_w = roi_w / PW
    rows of bin ph: [floor(ph*bin_h) + ys, ceil((ph+1)*bin_h) + ys), clipped to [0, H]
    cols of bin pw: [floor(pw*bin_w) + xs, ceil((pw+1)*bin_w) + xs), clipped to [0, W]
    out = max over the bin's cells, or 0 for an empty bin

The gradient goes to the arg-max cell of each (bin, channel). Coordinates are computed in the
input's dtype (fp32 for fp16/bf16), as the kernel does, so floor/ceil decisions match.

How it is computed: each bin is a "bag" of feature cells; on a channels-last copy of the map,
``embedding_bag(mode="max")`` takes the max of every bag for all channels at once, and the
backward sends each gradient to its arg-max cell with one ``index_add_``. The bags are listed
flat, vectorised over RoIs, in chunks of RoIs whose bags hold about ``CHUNK_ELEMENTS`` entries.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from maskrcnn.ops._bag_gather import TableFunctionCtx
from maskrcnn.ops._roi_args import (
    BoxesLike,
    boxes_to_rois,
    check_input,
    cost_chunks,
    empty_output,
    index_dtype,
    pair_output_size,
    round_half_away,
    to_channels_last_table,
)


def _axis_ranges(start: Tensor, size: Tensor, bins: int, length: int) -> tuple[Tensor, Tensor]:
    """First cell and cell count of every bin along one axis.

    Args:
        start: [K] quantised RoI start (integer-valued, geometry dtype).
        size: [K] quantised RoI extent (>= 1).
        bins: P.
        length: H or W.

    Returns:
        ``first`` [K, P] int64 and ``count`` [K, P] int64 (0 for an empty bin).
    """
    bin_size = (size / bins)[:, None]  # [K, 1]
    p = torch.arange(bins, dtype=size.dtype, device=size.device)  # [P]
    lo = torch.floor(p * bin_size) + start[:, None]  # [K, P]
    hi = torch.ceil((p + 1) * bin_size) + start[:, None]
    lo = lo.clamp(0, length).to(torch.int64)
    hi = hi.clamp(0, length).to(torch.int64)
    return lo, (hi - lo).clamp(min=0)


def _bin_bags(
    start: Tensor, first_y: Tensor, count_y: Tensor, first_x: Tensor, count_x: Tensor, w: int
) -> tuple[Tensor, Tensor]:
    """Flat bags listing the cells of every bin, row by row, built without padding.

    Args:
        start: [k] table row of each RoI's image origin (batch index * H * W).
        first_y, count_y: [k, PH] first row and row count of every bin.
        first_x, count_x: [k, PW] first column and column count of every bin.
        w: W.

    Returns:
        index [E] (table rows) and offsets [k*PH*PW] (bag starts), bins in (roi, ph, pw) order.
    """
    k, ph = first_y.shape
    pw = first_x.shape[1]
    corner = start[:, None, None] + first_y[:, :, None] * w + first_x[:, None, :]  # [k, PH, PW]
    cols = count_x[:, None, :].expand(k, ph, pw)  # [k, PH, PW], cells per bin row
    counts = (count_y[:, :, None] * cols).reshape(-1)  # [B]
    offsets = counts.cumsum(0) - counts  # [B]
    total = int(offsets[-1] + counts[-1])
    arange = partial(torch.arange, device=counts.device, dtype=counts.dtype)
    bag = torch.repeat_interleave(arange(counts.numel()), counts, output_size=total)  # [E]
    pos = arange(total) - offsets[bag]  # [E], position of every entry in its bin
    bag_cols = cols.reshape(-1)[bag]  # [E]
    dy = torch.div(pos, bag_cols, rounding_mode="floor")  # [E], row within the bin
    index = corner.reshape(-1)[bag] + dy * w + (pos - dy * bag_cols)  # [E]
    return index, offsets


class BagMax(torch.autograd.Function):
    """Max over each bag of table rows, per channel; the gradient goes to the arg-max row.

    ``embedding_bag(mode="max")``'s own backward runs one ``index_add_`` per channel; this one
    is a single ``index_add_`` over (row, channel) pairs.
    """

    @staticmethod
    def forward(ctx: TableFunctionCtx, table: Tensor, index: Tensor, offsets: Tensor) -> Tensor:
        """table [R, C], index [E], offsets [B] -> [B, C] (0 for an empty bag)."""
        out, _, bag_size, argmax = torch.embedding_bag(table, index, offsets, False, 2)
        ctx.save_for_backward(argmax, bag_size)  # [B, C] arg-max table rows, [B] sizes
        ctx.num_rows = table.shape[0]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: TableFunctionCtx, grad_out: Tensor) -> tuple[Tensor, None, None]:
        """grad_out [B, C] -> grad_table [R, C]."""
        argmax, bag_size = ctx.saved_tensors
        c = grad_out.shape[1]
        grad_out = torch.where(bag_size[:, None] > 0, grad_out, 0)  # empty bags read nothing
        target = argmax.long() * c + torch.arange(c, device=argmax.device)  # [B, C] (row, chan)
        grad_table = grad_out.new_zeros(ctx.num_rows * c)
        grad_table.index_add_(0, target.reshape(-1), grad_out.reshape(-1))
        return grad_table.view(ctx.num_rows, c), None, None


def roi_pool(
    input: Tensor,
    boxes: BoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool: max over the quantised bins of every RoI (see the module docstring).

    Args:
        input: [N, C, H, W] features, any floating dtype.
        boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L_i, 4].
        output_size: int or (PH, PW).
        spatial_scale: factor mapping box coordinates to feature-map coordinates.

    Returns:
        [K, C, PH, PW], dtype of ``input``. Differentiable with respect to ``input`` only.

    Raises:
        ValueError: on a bad ``input``, ``boxes`` or ``output_size``.
    """
    check_input(input)
    ph, pw = size = pair_output_size(output_size)
    rois = boxes_to_rois(boxes, input)  # [K, 5]
    if rois.shape[0] == 0:
        return empty_output(input, size)
    n, c, h, w = input.shape
    corners = round_half_away(rois[:, 1:5] * spatial_scale)  # [K, 4] xs, ys, xe, ye
    extent = (corners[:, 2:4] - corners[:, 0:2] + 1).clamp(min=1)  # [K, 2] roi_w, roi_h
    first_y, count_y = _axis_ranges(corners[:, 1], extent[:, 1], ph, h)  # [K, PH] each
    first_x, count_x = _axis_ranges(corners[:, 0], extent[:, 0], pw, w)  # [K, PW] each
    idx_dtype = index_dtype(n * h * w)
    start = rois[:, 0].to(idx_dtype) * (h * w)  # [K]
    first_y, count_y = first_y.to(idx_dtype), count_y.to(idx_dtype)
    first_x, count_x = first_x.to(idx_dtype), count_x.to(idx_dtype)
    table = to_channels_last_table(input, input.dtype)  # [N*H*W, C]
    cells = count_y.sum(1, dtype=torch.int64) * count_x.sum(1, dtype=torch.int64)  # [K] entries
    outs = []
    for k0, k1 in cost_chunks(cells):
        sl = slice(k0, k1)
        index, offsets = _bin_bags(start[sl], first_y[sl], count_y[sl], first_x[sl], count_x[sl], w)
        if table.requires_grad and torch.is_grad_enabled():
            outs.append(BagMax.apply(table, index, offsets))  # [k*PH*PW, C]
        else:
            outs.append(F.embedding_bag(index, table, offsets, mode="max"))
    pooled = outs[0] if len(outs) == 1 else torch.cat(outs)
    return pooled.view(-1, ph, pw, c).permute(0, 3, 1, 2).contiguous()  # [K, C, PH, PW]


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool` (same arguments, stored at construction)."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float = 1.0) -> None:
        super().__init__()
        self.output_size = pair_output_size(output_size)
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, boxes: BoxesLike) -> Tensor:
        """input [N, C, H, W], boxes [K, 5] or list of [L_i, 4] -> [K, C, PH, PW]."""
        return roi_pool(input, boxes, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
