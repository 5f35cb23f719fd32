"""Multi-level RoI pooling: each RoI is pooled from the FPN level that suits its size.

The paper's FPN level rule: an RoI of width w and height h goes to level
``k = floor(k0 + log2(sqrt(w * h) / 224))`` with k0 = 4, clamped to the levels present (P2-P5).
The pooling operator itself (RoIAlign avg or max, RoIWarp avg or max, RoIPool) is a config
choice, so the paper's Table 2c ablation is one field.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from maskrcnn.config import PoolerConfig
from maskrcnn.ops import roi_align, roi_pool, roi_warp
from maskrcnn.ops._roi_args import boxes_to_rois


def assign_levels(
    boxes: Tensor,
    *,
    min_level: int,
    max_level: int,
    canonical_box_size: int = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """FPN level index (0 = ``min_level``) of each box.

    Args:
        boxes: [K, 4] xyxy in the network frame.

    Returns:
        [K] int64 in [0, max_level - min_level].
    """
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(
        canonical_level
        + torch.log2(sizes / canonical_box_size)
        + torch.tensor(eps, dtype=sizes.dtype)
    )
    # A NaN box (a diverged run) goes to the finest level rather than to no level at all.
    levels = torch.nan_to_num(levels, nan=float(min_level))
    return (levels.clamp(min=min_level, max=max_level) - min_level).to(torch.int64)


class MultiLevelRoIPooler(nn.Module):
    """Pools [K] RoIs from a list of feature levels into [K, C, S, S]."""

    def __init__(self, *, cfg: PoolerConfig, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        self.strides = tuple(strides)
        self.scales = tuple(1.0 / s for s in strides)
        levels = [int(round(math.log2(s))) for s in strides]
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(f"pooler strides must be consecutive powers of two, got {strides}")
        self.min_level, self.max_level = levels[0], levels[-1]

    def pool(self, features: Tensor, rois: Tensor, scale: float) -> Tensor:
        """One level: features [B, C, H, W], rois [K, 5] -> [K, C, S, S]."""
        cfg, size = self.cfg, self.cfg.output_size
        if cfg.op == "align":
            return roi_align(features, rois, size, scale, cfg.sampling_ratio, cfg.aligned)
        if cfg.op == "align_max":
            return roi_align(
                features, rois, size, scale, cfg.sampling_ratio, cfg.aligned, reduction="max"
            )
        if cfg.op == "warp":
            return roi_warp(features, rois, size, scale, cfg.sampling_ratio)
        if cfg.op == "warp_max":
            return roi_warp(features, rois, size, scale, cfg.sampling_ratio, reduction="max")
        if cfg.op == "pool":
            return roi_pool(features, rois, size, scale)
        raise ValueError(f"pooler.op: unknown operator {cfg.op!r}")

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """Pools RoIs.

        Args:
            features: per level, [B, C, H_l, W_l] (finest first).
            boxes: per image, [L_i, 4] xyxy in the network frame.

        Returns:
            [sum L_i, C, S, S], in the order of ``boxes``.
        """
        if len(features) != len(self.strides):
            raise ValueError(f"pooler expects {len(self.strides)} levels, got {len(features)}")
        # [K, 5]; coordinates stay at least fp32 even when the features are bf16/fp16.
        rois = boxes_to_rois(boxes, features[0])
        if len(features) == 1:
            return self.pool(features[0], rois, self.scales[0])
        levels = assign_levels(
            rois[:, 1:],
            min_level=self.min_level,
            max_level=self.max_level,
            canonical_box_size=self.cfg.canonical_box_size,
            canonical_level=self.cfg.canonical_level,
            eps=self.cfg.level_eps,
        )
        size = self.cfg.output_size
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], size, size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == level)[0]
            if idx.numel() > 0:
                out[idx] = self.pool(feature, rois[idx], scale).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"op={c.op}, output_size={c.output_size}, sampling_ratio={c.sampling_ratio}, "
            f"aligned={c.aligned}, strides={self.strides}"
        )
