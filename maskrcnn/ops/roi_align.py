"""RoIAlign (average, as torchvision, or the paper's max variant) in pure PyTorch.

Semantics are those of torchvision's CPU kernel (``roi_align_kernel.cpp``). For an RoI
``(b, x1, y1, x2, y2)``, scale ``s`` and offset ``o = 0.5 if aligned else 0``:

- the RoI spans ``[x1*s - o, x2*s - o]`` (likewise y); with ``aligned=False`` its width and
  height are raised to at least 1;
- it is cut into ``PH x PW`` bins; each bin holds ``gh x gw`` regularly spaced sample points,
  ``gh = sampling_ratio`` or, when ``sampling_ratio <= 0``, ``ceil(roi_height / PH)``;
- a sample is bilinearly interpolated, except that a sample outside ``[-1, H] x [-1, W]`` (or
  NaN) is 0, coordinates in ``[-1, 0)`` are clamped to 0, and a sample at or past row ``H - 1``
  reads row ``H - 1`` only (columns likewise);
- ``reduction="avg"``: the bin is the mean of its ``gh*gw`` samples (0 when there are none);
  ``reduction="max"``: the bin is the largest sample (0 when there are none).

How it is computed. A sample's bilinear weight is separable, ``w(y, x) = wy(y) * wx(x)``, and so
is the validity test, so for "avg" the weights of one bin are an outer product of a short list
of (row, weight) taps per (RoI, ph) and of (column, weight) taps per (RoI, pw); duplicate rows
of neighbouring samples are merged and zero weights dropped (about (gh+1) rows instead of 2*gh
for small bins). The bins then read a channels-last copy of the map through a sparse weighted
gather (:mod:`maskrcnn.ops._bag_gather`), whose backward is the transposed gather. "max" gathers
each sample's four bilinear taps separately and takes the max over the bin's samples, so its
gradient reaches the arg-max sample's four neighbours with their bilinear weights.

The result is linear in the features for "avg", exact up to float rounding, with no Python loop
over RoIs: work is vectorised over RoIs and chunked so that no padded intermediate exceeds
``CHUNK_ELEMENTS`` elements (``[k, PH, PW, taps]``, never ``[K, C, H, W]``).

One knowing difference from the kernel: taps whose bilinear weight is exactly 0 are skipped, so
an inf/NaN feature under a zero weight does not turn the bin into NaN (the kernel computes
``0 * inf``). torchvision's kernel also fails on two inputs this handles: a NaN box (it
crashes; here the samples are 0) and an inverted box with ``aligned=True`` and adaptive
sampling (a negative sample count; here the bin has no samples and is 0).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from maskrcnn.ops._bag_gather import bags_from_padded, roi_bag_gather, weighted_bag_gather
from maskrcnn.ops._roi_args import (
    BoxesLike,
    boxes_to_rois,
    check_input,
    empty_output,
    geometry_dtype,
    index_dtype,
    pair_output_size,
    roi_chunks,
    to_channels_last_table,
)

REDUCTIONS = ("avg", "max")

# (low, high, frac, valid, exists) of every sample along one axis; see axis_samples.
Samples = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def axis_samples(start: Tensor, size: Tensor, bins: int, grid: Tensor, length: int) -> Samples:
    """Sample points of every bin along one axis, with their two bilinear taps.

    Args:
        start: [K] RoI start in feature-map coordinates (geometry dtype).
        size: [K] RoI extent.
        bins: number of bins P along this axis.
        grid: [K] int64 samples per bin (``gh`` or ``gw``), >= 0.
        length: feature-map extent along the axis (H or W).

    Returns:
        ``low``, ``high`` ([K, P, G] int64 rows), ``frac`` ([K, P, G], the weight of ``high``;
        ``low`` gets ``1 - frac``), ``valid`` ([K, P, G] bool, sample exists and lies in
        ``[-1, length]``) and ``exists`` ([K, 1, G] bool, ``index < grid``); G = max grid.
    """
    dtype, device = start.dtype, start.device
    grid_max = max(int(grid.max()), 1)
    bin_size = (size / bins)[:, None, None]  # [K, 1, 1]
    p = torch.arange(bins, dtype=dtype, device=device)[:, None]  # [P, 1]
    i = torch.arange(grid_max, dtype=dtype, device=device)  # [G]
    # The kernel's expression order: (start + p*bin) + (i + .5)*bin/grid.
    coord = (start[:, None, None] + p * bin_size) + (i + 0.5) * bin_size / grid[:, None, None]
    exists = torch.arange(grid_max, device=device) < grid[:, None, None]  # [K, 1, G]
    valid = exists & (coord >= -1) & (coord <= length)  # [K, P, G]; NaN -> False
    coord = torch.where(valid, coord, 0).clamp(min=0)
    low = coord.to(torch.int64)  # truncation, coord >= 0
    at_end = low >= length - 1
    low = torch.where(at_end, length - 1, low)
    high = torch.where(at_end, length - 1, low + 1)
    frac = torch.where(at_end, 0, coord - low.to(dtype))
    return low, high, frac, valid, exists


def axis_taps(
    low: Tensor, high: Tensor, frac: Tensor, valid: Tensor, length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Merges the samples' taps of each bin into distinct (row, summed weight) pairs.

    Args:
        low, high, frac, valid: [K, P, G] from :func:`axis_samples`.
        length: feature-map extent along the axis (used as an out-of-range sentinel row).

    Returns:
        ``rows`` [K, P, T] int64, ``weights`` [K, P, T] and ``keep`` [K, P, T] bool, each bin's
        distinct rows packed first; T is the largest tap count of any bin (T <= 2G).
    """
    rows = torch.stack((low, high), dim=-1).flatten(-2)  # [K, P, 2G]
    zero = frac.new_zeros(())
    weights = torch.stack(
        (torch.where(valid, 1 - frac, zero), torch.where(valid, frac, zero)), dim=-1
    ).flatten(-2)  # [K, P, 2G]
    rows = torch.where(weights > 0, rows, length)  # zero-weight taps sort last and are dropped
    rows, order = rows.sort(dim=-1)
    weights = weights.gather(-1, order)
    first = torch.ones_like(rows, dtype=torch.bool)
    first[..., 1:] = rows[..., 1:] != rows[..., :-1]
    slot = first.cumsum(-1) - 1  # [K, P, 2G], merged position of each tap
    merged_weights = torch.zeros_like(weights).scatter_add_(-1, slot, weights)
    merged_rows = torch.full_like(rows, length).scatter_(-1, slot, rows)  # equal per slot
    keep = merged_rows < length
    taps = max(int(keep.sum(-1).max()), 1)
    keep = keep[..., :taps]
    merged_rows = torch.where(keep, merged_rows[..., :taps], 0)
    return merged_rows, merged_weights[..., :taps], keep


def _grid(size: Tensor, bins: int, sampling_ratio: int) -> Tensor:
    """[K] int64 samples per bin: ``sampling_ratio``, or ``ceil(size / bins)`` when <= 0."""
    if sampling_ratio > 0:
        return torch.full(size.shape, sampling_ratio, dtype=torch.int64, device=size.device)
    grid = torch.ceil(size / bins).nan_to_num(0.0).clamp(min=0, max=2**20)
    return grid.to(torch.int64)


def align_features(
    input: Tensor,
    batch: Tensor,
    start: Tensor,
    extent: Tensor,
    output_size: tuple[int, int],
    sampling_ratio: int,
    reduction: str,
) -> Tensor:
    """RoIAlign on RoIs already given in feature-map coordinates (shared with ``roi_warp``).

    Args:
        input: [N, C, H, W] features.
        batch: [K] int64 image index of each RoI (K >= 1).
        start: [K, 2] RoI origin (x, y) in feature-map coordinates, geometry dtype.
        extent: [K, 2] RoI size (w, h), geometry dtype.
        output_size: (PH, PW).
        sampling_ratio: samples per bin and axis; <= 0 for ``ceil(size / bins)``.
        reduction: "avg" or "max".

    Returns:
        [K, C, PH, PW] in ``input.dtype``.
    """
    n, c, h, w = input.shape
    ph, pw = output_size
    num_rois = batch.shape[0]
    start_x, start_y = start.unbind(1)
    size_x, size_y = extent.unbind(1)
    table = to_channels_last_table(input, geometry_dtype(input.dtype))  # [N*H*W, C]
    grid_y, grid_x = _grid(size_y, ph, sampling_ratio), _grid(size_x, pw, sampling_ratio)
    samples_y = axis_samples(start_y, size_y, ph, grid_y, h)  # 4 x [K, PH, Gy] + [K, 1, Gy]
    samples_x = axis_samples(start_x, size_x, pw, grid_x, w)  # 4 x [K, PW, Gx] + [K, 1, Gx]
    base = batch * (h * w)  # [K], first table row of each RoI's image
    if reduction == "avg":
        count = (grid_y * grid_x).clamp(min=1).to(table.dtype)  # [K]
        base = base.to(index_dtype(table.shape[0]))
        bags = _avg_bags(base, count, samples_y, samples_x, h, w, output_size)
        return roi_bag_gather(table, *bags, output_size, input.dtype)  # [K, C, PH, PW]
    pooled = _max_bins(table, base, samples_y, samples_x, w, output_size)  # [K*PH*PW, C]
    pooled = pooled.view(num_rois, ph, pw, c).permute(0, 3, 1, 2)  # [K, C, PH, PW] view
    return pooled.contiguous().to(input.dtype)


def _avg_bags(
    base: Tensor,
    count: Tensor,
    samples_y: Samples,
    samples_x: Samples,
    h: int,
    w: int,
    output_size: tuple[int, int],
) -> tuple[Tensor, Tensor, Tensor]:
    """The bags of the mean: every bin's merged taps with weights ``wy * wx / count``.

    Args:
        base: [K] first table row of each RoI's image (int32 or int64, the index dtype).
        count: [K] samples per bin (>= 1), the mean's divisor.
        samples_y, samples_x: from :func:`axis_samples`.
        h, w: feature-map size.
        output_size: (PH, PW).

    Returns:
        index [E], weight [E] and offsets [K*PH*PW], bins in (roi, ph, pw) order.
    """
    ph, pw = output_size
    rows_y, wts_y, keep_y = axis_taps(*samples_y[:4], h)  # [K, PH, Ty] each
    rows_x, wts_x, keep_x = axis_taps(*samples_x[:4], w)  # [K, PW, Tx] each
    rows_y, rows_x = rows_y.to(base.dtype), rows_x.to(base.dtype)
    wts_y = wts_y / count[:, None, None]  # the 1/count of the mean, folded into the y weights
    taps = rows_y.shape[-1] * rows_x.shape[-1]
    pieces = []
    for k0, k1 in roi_chunks(base.shape[0], ph * pw * taps):
        index = (
            base[k0:k1, None, None, None, None]
            + rows_y[k0:k1, :, None, :, None] * w
            + rows_x[k0:k1, None, :, None, :]
        )  # [k, PH, PW, Ty, Tx]
        weight = wts_y[k0:k1, :, None, :, None] * wts_x[k0:k1, None, :, None, :]
        keep = keep_y[k0:k1, :, None, :, None] & keep_x[k0:k1, None, :, None, :]
        pieces.append(
            bags_from_padded(index.view(-1, taps), weight.view(-1, taps), keep.view(-1, taps))
        )
    if len(pieces) == 1:
        return pieces[0]
    indices = [piece[0] for piece in pieces]
    weights = [piece[1] for piece in pieces]
    shifts = [0]
    for piece_index in indices[:-1]:
        shifts.append(shifts[-1] + piece_index.numel())
    # Global entry starts: each piece's offsets count from its own first entry.
    offsets = torch.cat([piece[2] + shift for piece, shift in zip(pieces, shifts)])
    return torch.cat(indices), torch.cat(weights), offsets


def _max_bins(
    table: Tensor,
    base: Tensor,
    samples_y: Samples,
    samples_x: Samples,
    w: int,
    output_size: tuple[int, int],
) -> Tensor:
    """Max over each bin's bilinear samples (0 for a bin without samples).

    Args:
        table: [R, C] channels-last feature rows.
        base: [K] int64 first table row of each RoI's image.
        samples_y, samples_x: from :func:`axis_samples`.
        w: feature-map width.
        output_size: (PH, PW).

    Returns:
        [K*PH*PW, C], bins in (roi, ph, pw) order.
    """
    ph, pw = output_size
    low_y, high_y, frac_y, valid_y, exists_y = samples_y
    low_x, high_x, frac_x, valid_x, exists_x = samples_x
    rows_y = torch.stack((low_y, high_y), -1)  # [K, PH, Gy, 2]
    rows_x = torch.stack((low_x, high_x), -1)  # [K, PW, Gx, 2]
    zero = frac_y.new_zeros(())
    wts_y = torch.where(valid_y[..., None], torch.stack((1 - frac_y, frac_y), -1), zero)
    wts_x = torch.where(valid_x[..., None], torch.stack((1 - frac_x, frac_x), -1), zero)
    gy, gx = rows_y.shape[2], rows_x.shape[2]
    c = table.shape[1]
    # The per-sample values [k*PH*PW, Gy*Gx, C] are the big intermediate: a chunk holds at most
    # about 4 * CHUNK_ELEMENTS of them.
    outs = []
    for k0, k1 in roi_chunks(base.shape[0], ph * pw * gy * gx * max(c, 4) // 4):
        index = (
            base[k0:k1, None, None, None, None, None, None]
            + rows_y[k0:k1, :, None, :, None, :, None] * w
            + rows_x[k0:k1, None, :, None, :, None, :]
        )  # [k, PH, PW, Gy, Gx, 2, 2]
        weight = wts_y[k0:k1, :, None, :, None, :, None] * wts_x[k0:k1, None, :, None, :, None, :]
        index, weight = index.reshape(-1), weight.reshape(-1)  # 4 taps per sample
        offsets = torch.arange(0, index.numel(), 4, device=index.device)
        values = weighted_bag_gather(table, index, weight, offsets)  # [k*PH*PW*Gy*Gx, C]
        values = values.view(-1, gy * gx, c)  # [k*PH*PW, Gy*Gx, C]
        exists = exists_y[k0:k1, :, None, :, None] & exists_x[k0:k1, None, :, None, :]
        exists = exists.expand(-1, ph, pw, -1, -1).reshape(-1, gy * gx, 1)  # [k*PH*PW, G, 1]
        best = values.masked_fill(~exists, float("-inf")).max(dim=1).values  # [k*PH*PW, C]
        outs.append(torch.where(exists.any(dim=1), best, 0))  # binless samples -> 0
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def roi_align(
    input: Tensor,
    boxes: BoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    reduction: str = "avg",
) -> Tensor:
    """RoIAlign: pools every RoI to a fixed ``output_size`` by bilinear sampling.

    A drop-in for ``torchvision.ops.roi_align`` (``reduction="avg"``), plus the Mask R-CNN
    paper's max variant. See the module docstring for the exact sampling rule.

    Args:
        input: [N, C, H, W] features, any floating dtype (fp16/bf16 are computed in fp32).
        boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L_i, 4] in input
            image coordinates, one per image.
        output_size: int or (PH, PW).
        spatial_scale: factor mapping box coordinates to feature-map coordinates.
        sampling_ratio: sample points per bin and axis; <= 0 for adaptive,
            ``ceil(roi_size / output_size)`` per RoI.
        aligned: shift the box by -0.5 pixel (pixel centres at half-integers).
        reduction: "avg" (mean of a bin's samples) or "max" (their maximum).

    Returns:
        [K, C, PH, PW], dtype of ``input``. Differentiable with respect to ``input`` only.

    Raises:
        ValueError: on a bad ``input``, ``boxes``, ``output_size`` or ``reduction``.
    """
    check_input(input)
    size = pair_output_size(output_size)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    rois = boxes_to_rois(boxes, input)  # [K, 5]
    if rois.shape[0] == 0:
        return empty_output(input, size)
    offset = 0.5 if aligned else 0.0
    start = rois[:, 1:3] * spatial_scale - offset  # [K, 2] (x, y)
    extent = rois[:, 3:5] * spatial_scale - offset - start  # [K, 2] (w, h)
    if not aligned:
        extent = extent.clamp(min=1.0)  # malformed RoIs are forced to 1x1
    batch = rois[:, 0].to(torch.int64)
    return align_features(input, batch, start, extent, size, sampling_ratio, reduction)


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (same arguments, stored at construction)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
        reduction: str = "avg",
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
        self.output_size = pair_output_size(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.reduction = reduction

    def forward(self, input: Tensor, boxes: BoxesLike) -> Tensor:
        """input [N, C, H, W], boxes [K, 5] or list of [L_i, 4] -> [K, C, PH, PW]."""
        return roi_align(
            input,
            boxes,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, "
            f"reduction={self.reduction!r}"
        )
