"""The mask branch: a small fully convolutional network on each RoI (paper Figure 4).

FPN head: four 3x3 convs of 256 on the 14x14 pooled features, a 2x2 stride-2 deconvolution
to 28x28, and a 1x1 conv to one mask logit map per class (or one, class-agnostic). The
paper's MLP alternative (Table 2e: fc 1024, fc 1024, fc to 28x28 per class) is the other
kind ``MaskHeadConfig.head_type`` names (:class:`MaskFCNHead`, :class:`MaskMLPHead`). Masks
are predicted for every class and the detected class's map is read out, which decouples mask
and class prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import MaskHeadConfig, MaskLossKind
from maskrcnn.modeling.layers import conv_relu, conv_stack


class MaskFCNHead(nn.Module):
    """The paper's mask head: pooled RoI features [K, C, S, S] -> mask logits [K, M, 2S, 2S].

    ``cfg.num_convs`` 3x3 convs, a 2x2 stride-2 deconvolution and a 1x1 conv to M maps: M is
    ``num_classes``, or 1 when ``cfg.class_agnostic``.
    """

    def __init__(self, *, cfg: MaskHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        convs = conv_stack(
            in_channels, num_convs=cfg.num_convs, out_channels=cfg.conv_dim, norm=cfg.conv_norm
        )
        channels = cfg.conv_dim if convs else in_channels
        self.convs = nn.ModuleList(convs)
        self.deconv = nn.ConvTranspose2d(channels, cfg.conv_dim, kernel_size=2, stride=2)
        num_mask_classes = 1 if cfg.class_agnostic else num_classes
        self.predictor = nn.Conv2d(cfg.conv_dim, num_mask_classes, kernel_size=1)
        for layer in [*(c.conv for c in convs), self.deconv]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        if self.predictor.bias is not None:
            nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: [K, C, S, S] -> mask logits [K, M, 2S, 2S]."""
        # Channels-last convolutions run ~1.6x faster on CPU (oneDNN) for these 14x14 maps.
        x = x.contiguous(memory_format=torch.channels_last)
        for conv in self.convs:
            x = conv_relu(x, conv)
        x = F.relu(self.deconv(x), inplace=True)
        logits: Tensor = self.predictor(x)
        return logits


class MaskMLPHead(nn.Module):
    """The paper's MLP alternative (Table 2e): [K, C, S, S] -> mask logits [K, M, 2S, 2S].

    fc 1024, fc 1024 (with ReLU), and an fc to M maps of 2S x 2S: M is ``num_classes``, or 1
    when ``cfg.class_agnostic``.
    """

    def __init__(self, *, cfg: MaskHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_mask_classes = 1 if cfg.class_agnostic else num_classes
        size = cfg.pooler.output_size
        self.mask_size = 2 * size
        features = in_channels * size * size
        self.fcs = nn.ModuleList()
        for _ in range(2):
            self.fcs.append(nn.Linear(features, 1024))
            features = 1024
        self.predictor = nn.Linear(features, self.num_mask_classes * self.mask_size**2)

    def forward(self, x: Tensor) -> Tensor:
        """x: [K, C, S, S] -> mask logits [K, M, 2S, 2S]."""
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x), inplace=True)
        logits: Tensor = self.predictor(x)
        return logits.view(-1, self.num_mask_classes, self.mask_size, self.mask_size)


# The mask branch's network, of the kind ``MaskHeadConfig.head_type`` names.
MaskHead = MaskFCNHead | MaskMLPHead


def build_mask_head(*, cfg: MaskHeadConfig, in_channels: int, num_classes: int) -> MaskHead:
    """The mask head ``cfg.head_type`` names ("fcn": :class:`MaskFCNHead`, "mlp": the MLP)."""
    if cfg.head_type == "fcn":
        return MaskFCNHead(cfg=cfg, in_channels=in_channels, num_classes=num_classes)
    if cfg.head_type == "mlp":
        return MaskMLPHead(cfg=cfg, in_channels=in_channels, num_classes=num_classes)
    raise ValueError(f"mask_head.head_type: unknown {cfg.head_type!r}")


def mask_probs_for_labels(
    mask_logits: Tensor, labels: Tensor, *, loss: MaskLossKind = "sigmoid"
) -> Tensor:
    """The predicted class's mask probabilities.

    Args:
        mask_logits: [K, M, H, W] (M = 1 for class-agnostic masks).
        labels: [K] int64 predicted classes.
        loss: "sigmoid" (per-class, independent) or "softmax" (competing classes).

    Returns:
        [K, 1, H, W] probabilities in [0, 1], at least fp32.
    """
    if mask_logits.shape[1] == 1:
        return _at_least_fp32(mask_logits).sigmoid()
    index = torch.arange(mask_logits.shape[0], device=labels.device)
    if loss == "softmax":
        return F.softmax(_at_least_fp32(mask_logits), dim=1)[index, labels][:, None]
    # The predicted class's channel first, then fp32: one class of 80-90 is cast, not all.
    return _at_least_fp32(mask_logits[index, labels][:, None]).sigmoid()


def _at_least_fp32(x: Tensor) -> Tensor:
    """bf16/fp16 -> fp32 (sigmoid and softmax of low-precision logits lose digits); else x."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
