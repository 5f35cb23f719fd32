"""Feature Pyramid Network (Lin et al. 2017) on top of the ResNet bottom-up network.

From C2..C5 (``res2``..``res5``) it builds P2..P5, each with ``out_channels`` channels:
a 1x1 lateral conv on every C_k, a top-down pathway that upsamples the coarser merged map by
nearest neighbour to the lateral's size and adds it, and a 3x3 output conv on each merged map.
P6 is P5 subsampled by a stride-2, kernel-1 max pool (for the largest RPN anchors).

``maskrcnn.weights.torchvision_keys`` maps the keys of torchvision's ``BackboneWithFPN`` to ours.
"""

from __future__ import annotations

import re

import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import BackboneConfig, FPNConfig, NormKind
from maskrcnn.modeling.backbone import ResNet
from maskrcnn.modeling.layers import ConvNorm


class FPN(nn.Module):
    """Top-down feature pyramid with lateral connections, plus a max-pooled top level.

    Args:
        in_channels: channels of each input map, keyed ``res{k}`` for consecutive ``k``
            (normally ``res2``..``res5``); outputs are keyed ``p{k}`` plus one extra level.
        out_channels: channels of every output map.
        norm: normalisation after each conv ("none": convs with bias).

    Attributes:
        in_features: input names, finest first.
        out_features: output names, finest first (``p2``..``p6``).
        out_channels: channels of every output map.
        strides: ``{p_k: 2**k}``.
    """

    def __init__(
        self, *, in_channels: dict[str, int], out_channels: int = 256, norm: NormKind = "none"
    ) -> None:
        super().__init__()
        levels = []
        for name in in_channels:
            m = re.fullmatch(r"res(\d)", name)
            if m is None:
                raise ValueError(f"FPN input names must be 'res<k>', got {name!r}")
            levels.append(int(m.group(1)))
        order = sorted(range(len(levels)), key=levels.__getitem__)
        levels = [levels[i] for i in order]
        if not levels or levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(f"FPN needs consecutive levels, got {list(in_channels)}")
        names = list(in_channels)
        self.in_features = tuple(names[i] for i in order)
        self.out_features = tuple(f"p{k}" for k in [*levels, levels[-1] + 1])
        self.out_channels = out_channels
        self.strides = {f"p{k}": 2**k for k in [*levels, levels[-1] + 1]}

        self.lateral_convs = nn.ModuleList(
            ConvNorm(in_channels[f], out_channels, kernel_size=1, norm=norm)
            for f in self.in_features
        )
        self.output_convs = nn.ModuleList(
            ConvNorm(out_channels, out_channels, kernel_size=3, norm=norm) for _ in self.in_features
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Builds the pyramid.

        Args:
            features: ``{res_k: [N, C_k, H_k, W_k]}`` with ``H_{k+1} = ceil(H_k / 2)`` (any
                sizes work: the top-down map is resized to each lateral's size).

        Returns:
            ``{p_k: [N, out_channels, H_k, W_k]}`` for each input level, finest first, then
            the extra level ``[N, out_channels, ceil(H_top / 2), ceil(W_top / 2)]``.
        """
        xs = [features[f] for f in self.in_features]
        merged = self.lateral_convs[-1](xs[-1])
        results = [self.output_convs[-1](merged)]
        for i in range(len(xs) - 2, -1, -1):
            lateral = self.lateral_convs[i](xs[i])
            top_down = F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            merged = lateral + top_down
            results.insert(0, self.output_convs[i](merged))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2))
        return dict(zip(self.out_features, results))


class BackboneWithFPN(nn.Module):
    """ResNet bottom-up network followed by an FPN: images -> ``p2``..``p6``.

    Attributes:
        bottom_up: the ResNet.
        fpn: the pyramid.
        out_channels: channels of every output map (256 by default).
        strides: ``{p2: 4, p3: 8, p4: 16, p5: 32, p6: 64}``.
    """

    def __init__(self, bottom_up: ResNet, fpn: FPN) -> None:
        super().__init__()
        missing = [f for f in fpn.in_features if f not in bottom_up.out_features]
        if missing:
            raise ValueError(f"the FPN needs {missing}, which the bottom-up net does not return")
        self.bottom_up = bottom_up
        self.fpn = fpn
        self.out_channels = fpn.out_channels
        self.strides = dict(fpn.strides)

    @classmethod
    def from_config(cls, backbone: BackboneConfig, fpn: FPNConfig) -> BackboneWithFPN:
        """Builds a ResNet returning ``res2``..``res5`` and an FPN on it."""
        bottom_up = ResNet(backbone, out_features=("res2", "res3", "res4", "res5"))
        pyramid = FPN(
            in_channels=bottom_up.out_channels, out_channels=fpn.out_channels, norm=fpn.norm
        )
        return cls(bottom_up, pyramid)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images: [N, 3, H, W] (padded to a multiple of 32) -> ``{p_k: [N, C, H/2^k, W/2^k]}``."""
        pyramid: dict[str, Tensor] = self.fpn(self.bottom_up(images))
        return pyramid
