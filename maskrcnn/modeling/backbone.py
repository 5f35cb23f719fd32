"""ResNet / ResNeXt bottom-up network (He et al. 2016; Xie et al. 2017).

The network is a stem (7x7/2 conv, norm, ReLU, 3x3/2 max pool) followed by four stages
``res2``..``res5`` of residual blocks, at strides 4, 8, 16 and 32. Depths 18 and 34 use the
two-conv :class:`BasicBlock`; 50, 101 and 152 use the three-conv :class:`Bottleneck`, whose
3x3 conv may be grouped (ResNeXt). Every convolution is a :class:`ConvNorm`, so the state dict
reads ``res3.0.conv2.conv.weight``, ``res3.0.conv2.norm.running_var``,
``res3.0.shortcut.conv.weight`` and so on; ``maskrcnn.weights.torchvision_keys`` translates
torchvision's names to these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import BackboneConfig, NormKind
from maskrcnn.modeling.layers import ConvNorm, conv_relu, freeze

BlockKind = Literal["basic", "bottleneck"]

# Blocks per stage (res2, res3, res4, res5) for each depth.
STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")
STEM_CHANNELS = 64


@dataclass(frozen=True)
class BlockSpec:
    """The shape and normalisation of one residual block (:func:`make_stage` documents them).

    ``bottleneck_channels`` is the width of a :class:`Bottleneck`'s inner convs; a
    :class:`BasicBlock` has none and needs it to equal ``out_channels``.
    """

    in_channels: int
    out_channels: int
    bottleneck_channels: int
    stride: int = 1
    groups: int = 1
    norm: NormKind = "frozen_bn"
    eps: float = 1e-5
    gn_groups: int = 32
    stride_in_1x1: bool = False

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ) -> ConvNorm:
        """A :class:`ConvNorm` with this block's normalisation."""
        return ConvNorm(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            groups=groups,
            norm=self.norm,
            eps=self.eps,
            gn_groups=self.gn_groups,
        )

    def shortcut(self) -> ConvNorm | None:
        """A strided 1x1 projection when the shape changes, else ``None`` (identity)."""
        if self.stride == 1 and self.in_channels == self.out_channels:
            return None
        return self.conv(self.in_channels, self.out_channels, kernel_size=1, stride=self.stride)


def _last_conv_and_shortcut(
    last: ConvNorm, out: Tensor, x: Tensor, shortcut: ConvNorm | None
) -> Tensor:
    """``relu(last(out) + shortcut(x))`` (identity shortcut when None), one fused op in inference.

    out: [N, C, H', W'] residual branch before its last conv; x: [N, C_in, H, W] block input
    -> [N, C_out, H', W'].
    """
    identity = x if shortcut is None else shortcut(x)
    return conv_relu(out, last, residual=identity)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity or 1x1 projection shortcut (ResNet-18/34).

    The stride, if any, is in ``conv1`` (there is no 1x1 conv for ``spec.stride_in_1x1``).
    """

    def __init__(self, *, spec: BlockSpec) -> None:
        super().__init__()
        if spec.groups != 1 or spec.bottleneck_channels != spec.out_channels:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = spec.conv(
            spec.in_channels, spec.out_channels, kernel_size=3, stride=spec.stride
        )
        self.conv2 = spec.conv(spec.out_channels, spec.out_channels, kernel_size=3)
        self.shortcut = spec.shortcut()

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C_in, H, W] -> [N, C_out, H / stride, W / stride] (rounded up)."""
        out = conv_relu(x, self.conv1)
        return _last_conv_and_shortcut(self.conv2, out, x, self.shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped) and 1x1 expand convs with a shortcut (ResNet-50 and up).

    With ``spec.stride_in_1x1`` the stride sits in ``conv1`` (MSRA / detectron2), otherwise in
    the 3x3 ``conv2`` (torchvision, "ResNet v1.5").
    """

    def __init__(self, *, spec: BlockSpec) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (spec.stride, 1) if spec.stride_in_1x1 else (1, spec.stride)
        width = spec.bottleneck_channels
        self.conv1 = spec.conv(spec.in_channels, width, kernel_size=1, stride=stride_1x1)
        self.conv2 = spec.conv(width, width, kernel_size=3, stride=stride_3x3, groups=spec.groups)
        self.conv3 = spec.conv(width, spec.out_channels, kernel_size=1)
        self.shortcut = spec.shortcut()

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C_in, H, W] -> [N, C_out, H / stride, W / stride] (rounded up)."""
        out = conv_relu(x, self.conv1)
        out = conv_relu(out, self.conv2)
        return _last_conv_and_shortcut(self.conv3, out, x, self.shortcut)


def make_stage(
    *,
    block_kind: BlockKind,
    num_blocks: int,
    in_channels: int,
    bottleneck_channels: int,
    out_channels: int,
    first_stride: int,
    groups: int = 1,
    norm: NormKind = "frozen_bn",
    eps: float = 1e-5,
    gn_groups: int = 32,
    stride_in_1x1: bool = False,
) -> nn.Sequential:
    """Builds one ResNet stage: ``num_blocks`` residual blocks, the first one strided.

    Block ``b`` is child ``str(b)`` of the returned ``nn.Sequential``. :func:`resnet_stage`
    derives these arguments from a :class:`BackboneConfig`.

    Args:
        block_kind: "basic" (two 3x3 convs) or "bottleneck" (1x1, 3x3, 1x1).
        num_blocks: number of residual blocks.
        in_channels: channels of the stage input.
        bottleneck_channels: width of the inner convs (ignored in meaning for "basic", where
            it must equal ``out_channels``).
        out_channels: channels of the stage output.
        first_stride: stride of the first block (1 or 2); the others have stride 1.
        groups: groups of the 3x3 conv (ResNeXt cardinality).
        norm: normalisation after every conv.
        eps: the norm's epsilon.
        gn_groups: groups for GroupNorm.
        stride_in_1x1: put the stride in the first 1x1 conv rather than the 3x3 one.

    Returns:
        ``nn.Sequential`` mapping [N, in_channels, H, W] to
        [N, out_channels, ceil(H / first_stride), ceil(W / first_stride)].
    """
    if block_kind == "basic":
        block_cls: type[BasicBlock | Bottleneck] = BasicBlock
    elif block_kind == "bottleneck":
        block_cls = Bottleneck
    else:
        raise ValueError(f"unknown block kind {block_kind!r}")
    first = BlockSpec(
        in_channels=in_channels,
        out_channels=out_channels,
        bottleneck_channels=bottleneck_channels,
        stride=first_stride,
        groups=groups,
        norm=norm,
        eps=eps,
        gn_groups=gn_groups,
        stride_in_1x1=stride_in_1x1,
    )
    rest = dataclasses.replace(first, in_channels=out_channels, stride=1)
    return nn.Sequential(*(block_cls(spec=first if b == 0 else rest) for b in range(num_blocks)))


def stage_out_channels(cfg: BackboneConfig, index: int) -> int:
    """Output channels of stage ``STAGE_NAMES[index]``: ``64 * 2**index``, x4 for bottlenecks."""
    planes: int = 64 * 2**index  # (int ** int is Any to mypy)
    return planes * 4 if cfg.depth >= 50 else planes


def resnet_stage(cfg: BackboneConfig, index: int) -> nn.Sequential:
    """Stage ``STAGE_NAMES[index]`` (0: res2, ..., 3: res5) of the network ``cfg`` describes.

    The first block has stride 1 in res2 and 2 in the others. The C4 model builds its RoI head
    this way too: res5 run on the 14x14 pooled res4 features.

    Returns:
        ``nn.Sequential`` mapping [N, C_in, H, W] (C_in: the stem's 64 for res2, else the
        previous stage's output channels) to [N, stage_out_channels(cfg, index), ceil(H / s),
        ceil(W / s)], ``s`` the first block's stride.
    """
    planes = 64 * 2**index
    return make_stage(
        block_kind="bottleneck" if cfg.depth >= 50 else "basic",
        num_blocks=STAGE_BLOCKS[cfg.depth][index],
        in_channels=STEM_CHANNELS if index == 0 else stage_out_channels(cfg, index - 1),
        bottleneck_channels=int(planes * cfg.width_per_group / 64) * cfg.groups,
        out_channels=stage_out_channels(cfg, index),
        first_stride=1 if index == 0 else 2,
        groups=cfg.groups,
        norm=cfg.norm,
        eps=cfg.norm_eps,
        gn_groups=cfg.gn_groups,
        stride_in_1x1=cfg.stride_in_1x1,
    )


class Stem(nn.Module):
    """7x7/2 conv + norm + ReLU, then 3x3/2 max pool (padding 1): overall stride 4."""

    def __init__(self, *, norm: NormKind, eps: float, gn_groups: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(
            3, STEM_CHANNELS, kernel_size=7, stride=2, norm=norm, eps=eps, gn_groups=gn_groups
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, 3, H, W] -> [N, 64, ceil(H / 4), ceil(W / 4)]."""
        x = conv_relu(x, self.conv1)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """ResNet / ResNeXt returning the feature maps of the requested stages.

    Only the stages up to the last requested one are built (a C4 backbone has no ``res5``).

    Attributes:
        out_features: requested names, in network order.
        out_channels: channels of each requested feature map.
        strides: stride of each requested feature map (stem and res2: 4, ..., res5: 32).
    """

    def __init__(
        self,
        cfg: BackboneConfig,
        *,
        out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"),
    ) -> None:
        super().__init__()
        if cfg.depth not in STAGE_BLOCKS:
            raise ValueError(f"unsupported depth {cfg.depth}; choose from {sorted(STAGE_BLOCKS)}")
        if not 0 <= cfg.freeze_at <= 5:
            raise ValueError(f"freeze_at must be in [0, 5], got {cfg.freeze_at}")
        names = ("stem", *STAGE_NAMES)
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(f"out_features must be a non-empty subset of {names}, got {unknown}")
        self.out_features = tuple(f for f in names if f in out_features)

        self.stem = Stem(norm=cfg.norm, eps=cfg.norm_eps, gn_groups=cfg.gn_groups)
        channels = {"stem": STEM_CHANNELS}
        strides = {"stem": 4}
        num_stages = names.index(self.out_features[-1])  # 0: stem only
        for i in range(num_stages):
            self.add_module(STAGE_NAMES[i], resnet_stage(cfg, i))
            channels[STAGE_NAMES[i]] = stage_out_channels(cfg, i)
            strides[STAGE_NAMES[i]] = 4 * 2**i
        self.stage_names = STAGE_NAMES[:num_stages]
        self.out_channels = {f: channels[f] for f in self.out_features}
        self.strides = {f: strides[f] for f in self.out_features}

        self._init_weights()
        for name in names[: cfg.freeze_at]:
            if hasattr(self, name):
                freeze(getattr(self, name))

    def _init_weights(self) -> None:
        """Training-from-scratch init: He normal (fan_out) convs, norms at identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Runs the network.

        Args:
            x: images [N, 3, H, W], normalised (H and W need not be multiples of 32).

        Returns:
            ``{name: [N, out_channels[name], ceil(H / s), ceil(W / s)]}`` for each requested
            name, ``s = strides[name]`` (each stride-2 step rounds up).
        """
        outputs: dict[str, Tensor] = {}
        x = self.stem(x)
        if "stem" in self.out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs
