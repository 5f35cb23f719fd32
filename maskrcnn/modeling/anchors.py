"""Anchors: reference boxes tiled over every feature level.

At each location of level l there are ``len(sizes[l]) * len(aspect_ratios)`` anchors, ordered
aspect-ratio-major as torchvision orders them, and locations are row-major. An anchor of size
s and ratio r (= h / w) has w = s / sqrt(r), h = s * sqrt(r), centred at the location's
top-left corner plus ``offset * stride``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from maskrcnn.config import AnchorConfig

# (padded size, grid size of each level, dtype, device): what the anchors of a batch depend on.
_CacheKey = tuple[tuple[int, int], tuple[tuple[int, int], ...], torch.dtype, torch.device]


def cell_anchors(
    sizes: tuple[float, ...], aspect_ratios: tuple[float, ...], *, round_to_int: bool
) -> Tensor:
    """Anchors centred at the origin for one level.

    Returns:
        [len(aspect_ratios) * len(sizes), 4] xyxy, ratio-major.
    """
    scales = torch.tensor(sizes, dtype=torch.float32)
    ratios = torch.tensor(aspect_ratios, dtype=torch.float32)
    h_factor = torch.sqrt(ratios)
    w_factor = 1 / h_factor
    widths = (w_factor[:, None] * scales[None, :]).reshape(-1)
    heights = (h_factor[:, None] * scales[None, :]).reshape(-1)
    anchors = torch.stack([-widths, -heights, widths, heights], dim=1) / 2
    return anchors.round() if round_to_int else anchors


def grid_anchors(
    base: Tensor, grid_size: tuple[int, int], stride: tuple[int, int], offset: float = 0.0
) -> Tensor:
    """Tiles ``base`` ([A, 4]) over a grid of (h, w) cells with (stride_y, stride_x).

    Returns:
        [h * w * A, 4] xyxy, location-major.
    """
    grid_h, grid_w = grid_size
    stride_y, stride_x = stride
    device = base.device
    if offset == 0.0:
        # Integer shifts, as torchvision computes them (bit-identical anchors).
        xs = torch.arange(grid_w, dtype=torch.int32, device=device) * stride_x
        ys = torch.arange(grid_h, dtype=torch.int32, device=device) * stride_y
    else:
        xs = (torch.arange(grid_w, dtype=torch.float32, device=device) + offset) * stride_x
        ys = (torch.arange(grid_h, dtype=torch.float32, device=device) + offset) * stride_y
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)  # [h*w, 4]
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


class AnchorGenerator(nn.Module):
    """Generates the anchors of every level for a padded batch (the same for each image)."""

    def __init__(self, *, cfg: AnchorConfig, strides: tuple[int, ...]) -> None:
        super().__init__()
        if len(cfg.sizes) != len(strides):
            raise ValueError(
                f"anchors.sizes has {len(cfg.sizes)} levels but the backbone has {len(strides)}"
            )
        self.cfg = cfg
        self.strides = tuple(strides)
        self._base = [
            cell_anchors(s, cfg.aspect_ratios, round_to_int=cfg.round_base_anchors)
            for s in cfg.sizes
        ]
        self._cache: dict[_CacheKey, list[Tensor]] = {}

    @property
    def num_anchors_per_location(self) -> int:
        """A: anchors at each location (the same on every level)."""
        return len(self.cfg.sizes[0]) * len(self.cfg.aspect_ratios)

    def level_strides(
        self, padded_size: tuple[int, int], grid_sizes: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """(stride_y, stride_x) of each level."""
        if self.cfg.strides_from_grid:
            return [(padded_size[0] // g[0], padded_size[1] // g[1]) for g in grid_sizes]
        return [(s, s) for s in self.strides]

    def forward(self, padded_size: tuple[int, int], features: list[Tensor]) -> list[Tensor]:
        """Anchors for feature maps ``features`` ([B, C, H_l, W_l] each).

        Returns:
            One [H_l * W_l * A, 4] xyxy tensor per level, in the features' dtype.
        """
        grid_sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        dtype, device = features[0].dtype, features[0].device
        key = (padded_size, tuple(grid_sizes), dtype, device)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        strides = self.level_strides(padded_size, grid_sizes)
        anchors = [
            grid_anchors(base.to(device=device, dtype=dtype), g, s, self.cfg.offset)
            for base, g, s in zip(self._base, grid_sizes, strides)
        ]
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = anchors
        return anchors

    def extra_repr(self) -> str:
        return (
            f"sizes={self.cfg.sizes}, aspect_ratios={self.cfg.aspect_ratios}, "
            f"strides={self.strides}, rounded={self.cfg.round_base_anchors}"
        )
