"""Weighted sparse gather of feature rows, the linear core of RoIAlign and RoIWarp.

Once the sampling geometry is known, RoIAlign is linear in the features: every output bin is
a weighted sum of a few feature-map cells. With the map laid out channels-last as a table of
rows ``table[(b*H + y)*W + x] = features[b, :, y, x]`` ([R, C]), one bin is a "bag" of
(row index, weight) pairs, and the whole operator is the sparse product ``out = M @ table``
with ``M`` a [B, R] matrix holding one bag per row. ``torch.nn.functional.embedding_bag``
computes exactly this, vectorised over channels, on CPU and CUDA.

The backward is the transposed product ``grad_table = M^T @ grad_out``. Rather than
autograd's default for ``embedding_bag``, the Functions here build ``M^T`` explicitly (one
stable sort of the bag entries by row) and apply it with ``embedding_bag`` again: one bag per
table row, listing the output bins that read it. This is deterministic (no atomics) and
several times faster on CPU than the default backward.

For RoI outputs (:class:`RoIBagGather`), the bags are the bins of [K, C, PH, PW]; the gather
gives channels-last rows, and converting between those and NCHW is a transposition that is
memory-bound when done in one pass over a large tensor, so it is done chunk by chunk of RoIs
(``OUTPUT_CHUNK_ELEMENTS``), each chunk transposed while it is still in cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

# Elements of one chunk of [k*PH*PW, C] rows transposed to or from [k, C, PH, PW]: small enough
# to stay in cache (4M elements, 16 MB in fp32).
OUTPUT_CHUNK_ELEMENTS = 1 << 22


class TableFunctionCtx(FunctionCtx):
    """The ``ctx`` of the table Functions here, as their forward fills it for their backward.

    For the type checker only: at run time autograd passes its own context object.
    """

    saved_tensors: tuple[Tensor, ...]
    num_rows: int  # R, the table's row count


def bags_from_padded(index: Tensor, weight: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Packs padded bags into the flat (index, weight, offsets) form ``embedding_bag`` takes.

    Args:
        index: [B, T] table rows (int32 or int64), one padded bag per output row.
        weight: [B, T] weights.
        keep: [B, T] bool, the entries that belong to the bag.

    Returns:
        index [E] and weight [E] of the kept entries (bag-major), offsets [B] (bag starts, in
        ``index``'s dtype).
    """
    counts = keep.sum(dim=1, dtype=index.dtype)  # [B]
    offsets = counts.cumsum(0, dtype=index.dtype) - counts  # [B], exclusive prefix sum
    kept = keep.reshape(-1).nonzero().squeeze(1)  # [E]
    return (
        index.reshape(-1).index_select(0, kept),
        weight.reshape(-1).index_select(0, kept),
        offsets,
    )


def _transpose_bags(
    index: Tensor, weight: Tensor, offsets: Tensor, num_rows: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The bags of ``M^T``: for each table row, the output rows that read it, with weights.

    Args:
        index, weight: [E] bag entries of ``M`` (bag-major).
        offsets: [B] bag starts of ``M``.
        num_rows: R.

    Returns:
        (bag ids [E], weights [E], offsets [R]) of ``M^T``, grouped by table row.
    """
    num_entries = index.numel()
    counts = torch.diff(offsets, append=offsets.new_full((1,), num_entries))  # [B]
    bag = torch.repeat_interleave(
        torch.arange(offsets.numel(), device=index.device, dtype=index.dtype),
        counts,
        output_size=num_entries,
    )  # [E], the output row of every entry
    order = torch.sort(index, stable=True).indices  # [E], entries grouped by table row
    row_counts = torch.bincount(index, minlength=num_rows).to(index.dtype)  # [R]
    row_offsets = row_counts.cumsum(0, dtype=index.dtype) - row_counts  # [R]
    return bag[order], weight[order], row_offsets


class WeightedBagGather(torch.autograd.Function):
    """``out[i] = sum_j weight[j] * table[index[j]]`` over the entries j of bag i.

    Differentiable with respect to ``table`` only (the sampling geometry is constant).
    """

    @staticmethod
    def forward(
        ctx: TableFunctionCtx, table: Tensor, index: Tensor, weight: Tensor, offsets: Tensor
    ) -> Tensor:
        """table [R, C], index [E], weight [E], offsets [B] -> [B, C]."""
        ctx.save_for_backward(index, weight, offsets)
        ctx.num_rows = table.shape[0]
        return F.embedding_bag(index, table, offsets, mode="sum", per_sample_weights=weight)

    @staticmethod
    @once_differentiable
    def backward(ctx: TableFunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:
        """grad_out [B, C] -> grad_table [R, C]."""
        index, weight, offsets = ctx.saved_tensors
        bag, bag_weight, row_offsets = _transpose_bags(index, weight, offsets, ctx.num_rows)
        grad_table = F.embedding_bag(
            bag, grad_out.contiguous(), row_offsets, mode="sum", per_sample_weights=bag_weight
        )  # [R, C]; rows no bag reads come out as zeros
        return grad_table, None, None, None


def weighted_bag_gather(table: Tensor, index: Tensor, weight: Tensor, offsets: Tensor) -> Tensor:
    """Sparse weighted gather of table rows: [R, C] -> [B, C] (see :class:`WeightedBagGather`).

    Args:
        table: [R, C] feature rows (channels-last map).
        index: [E] int64 rows of ``table``, bag after bag.
        weight: [E] weights, same dtype as ``table``.
        offsets: [B] int64 start of each bag in ``index`` (non-decreasing, first is 0).

    Returns:
        [B, C]; an empty bag gives a zero row.
    """
    if table.requires_grad and torch.is_grad_enabled():
        out: Tensor = WeightedBagGather.apply(table, index, weight, offsets)
        return out
    return F.embedding_bag(index, table, offsets, mode="sum", per_sample_weights=weight)


def _roi_chunks(num_rois: int, bins: int, channels: int) -> list[tuple[int, int]]:
    """[k0, k1) RoI ranges whose [k, C, PH, PW] slices hold about OUTPUT_CHUNK_ELEMENTS."""
    step = max(1, OUTPUT_CHUNK_ELEMENTS // (bins * channels))
    return [(k, min(k + step, num_rois)) for k in range(0, num_rois, step)]


def gather_to_rois(
    table: Tensor,
    index: Tensor,
    weight: Tensor,
    offsets: Tensor,
    output_size: tuple[int, int],
    out_dtype: torch.dtype,
) -> Tensor:
    """Weighted gather whose bags are RoI bins, written straight to [K, C, PH, PW].

    The gather yields channels-last rows ([k*PH*PW, C]); transposing a large result to NCHW
    in one pass is memory-bound, so this runs chunk by chunk of RoIs and transposes each chunk
    while it is still in cache.

    Args:
        table: [R, C] feature rows.
        index, weight: [E] bag entries, bins in (roi, ph, pw) order.
        offsets: [K*PH*PW] bag starts.
        output_size: (PH, PW).
        out_dtype: dtype of the result.

    Returns:
        [K, C, PH, PW].
    """
    ph, pw = output_size
    bins, c = ph * pw, table.shape[1]
    num_rois = offsets.numel() // bins
    out = table.new_empty((num_rois, c, ph, pw), dtype=out_dtype)
    chunks = _roi_chunks(num_rois, bins, c)
    # Entry range of every chunk, fetched in one device sync.
    starts = offsets[[k0 * bins for k0, _ in chunks]]
    bounds = torch.cat([starts, offsets.new_tensor([index.numel()])]).tolist()
    for i, (k0, k1) in enumerate(chunks):
        e0, e1 = bounds[i], bounds[i + 1]
        rows = F.embedding_bag(
            index[e0:e1],
            table,
            offsets[k0 * bins : k1 * bins] - e0,
            mode="sum",
            per_sample_weights=weight[e0:e1],
        )  # [k*PH*PW, C]
        out[k0:k1].copy_(rows.view(k1 - k0, ph, pw, c).permute(0, 3, 1, 2))
    return out


class RoIBagGather(torch.autograd.Function):
    """Autograd form of :func:`gather_to_rois`; the backward is one transposed gather."""

    @staticmethod
    def forward(
        ctx: TableFunctionCtx,
        table: Tensor,
        index: Tensor,
        weight: Tensor,
        offsets: Tensor,
        output_size: tuple[int, int],
        out_dtype: torch.dtype,
    ) -> Tensor:
        """table [R, C]; index, weight [E]; offsets [K*PH*PW] -> [K, C, PH, PW]."""
        ctx.save_for_backward(index, weight, offsets)
        ctx.num_rows = table.shape[0]
        return gather_to_rois(table, index, weight, offsets, output_size, out_dtype)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: TableFunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor, None, None, None, None, None]:
        """grad_out [K, C, PH, PW] -> grad_table [R, C]."""
        index, weight, offsets = ctx.saved_tensors
        num_rois, c, ph, pw = grad_out.shape
        grad_rows = weight.new_empty((num_rois, ph, pw, c))
        for k0, k1 in _roi_chunks(num_rois, ph * pw, c):  # NCHW -> channels-last, in cache
            grad_rows[k0:k1].copy_(grad_out[k0:k1].permute(0, 2, 3, 1))
        grad_rows = grad_rows.view(-1, c)  # [K*PH*PW, C]
        bag, bag_weight, row_offsets = _transpose_bags(index, weight, offsets, ctx.num_rows)
        grad_table = F.embedding_bag(
            bag, grad_rows, row_offsets, mode="sum", per_sample_weights=bag_weight
        )  # [R, C]
        return grad_table, None, None, None, None, None


def roi_bag_gather(
    table: Tensor,
    index: Tensor,
    weight: Tensor,
    offsets: Tensor,
    output_size: tuple[int, int],
    out_dtype: torch.dtype,
) -> Tensor:
    """:func:`gather_to_rois`, differentiable with respect to ``table`` when it needs a grad."""
    if table.requires_grad and torch.is_grad_enabled():
        out: Tensor = RoIBagGather.apply(table, index, weight, offsets, output_size, out_dtype)
        return out
    return gather_to_rois(table, index, weight, offsets, output_size, out_dtype)
