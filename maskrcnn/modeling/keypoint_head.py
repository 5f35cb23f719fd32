"""The keypoint branch (paper section 5): a heatmap per keypoint for each detected person.

torchvision's layout: RoIAlign 14x14 on the FPN levels, eight 3x3 convs of 512 (+ ReLU), a 4x4
stride-2 transposed convolution to K maps at 28x28, and a bilinear x2 upsampling to 56x56. At
inference each heatmap is resized (bicubic) to its box's size in pixels and its argmax is the
keypoint (:func:`heatmaps_to_keypoints`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import KeypointHeadConfig
from maskrcnn.modeling.layers import conv_relu, conv_stack


class KeypointHead(nn.Module):
    """Pooled RoI features [R, C, S, S] -> keypoint heatmap logits [R, K, 4S, 4S]."""

    def __init__(self, *, cfg: KeypointHeadConfig, in_channels: int) -> None:
        super().__init__()
        convs = conv_stack(
            in_channels, num_convs=cfg.num_convs, out_channels=cfg.conv_dim, norm="none"
        )
        channels = cfg.conv_dim if convs else in_channels
        self.convs = nn.ModuleList(convs)
        self.predictor = nn.ConvTranspose2d(
            channels, cfg.num_keypoints, kernel_size=4, stride=2, padding=1
        )
        for layer in [*(c.conv for c in convs), self.predictor]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: [R, C, S, S] -> heatmap logits [R, K, 4S, 4S]."""
        for conv in self.convs:
            x = conv_relu(x, conv)
        x = self.predictor(x)
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def heatmaps_to_keypoints(heatmaps: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Keypoint locations and scores from heatmap logits.

    Each RoI's maps are resized (bicubic, align_corners=False) to ``ceil(w) x ceil(h)`` of its
    box (sides at least 1), and each map's argmax cell ``(i, j)`` maps back to the continuous
    point ``x0 + (j + 0.5) * w / ceil(w)``, ``y0 + (i + 0.5) * h / ceil(h)``.

    Args:
        heatmaps: [R, K, H, W] logits.
        boxes: [R, 4] xyxy boxes, in the frame the keypoints are wanted in.

    Returns:
        ``keypoints`` [R, K, 3] float32 (x, y, 1) and ``scores`` [R, K] float32, the resized
        logit at each keypoint.
    """
    num_rois, num_keypoints = heatmaps.shape[:2]
    keypoints = heatmaps.new_zeros((num_rois, num_keypoints, 3), dtype=torch.float32)
    scores = heatmaps.new_zeros((num_rois, num_keypoints), dtype=torch.float32)
    if num_rois == 0:
        return keypoints, scores
    boxes = boxes.float()
    widths = (boxes[:, 2] - boxes[:, 0]).clamp(min=1)
    heights = (boxes[:, 3] - boxes[:, 1]).clamp(min=1)
    widths_ceil, heights_ceil = widths.ceil(), heights.ceil()
    channel = torch.arange(num_keypoints, device=heatmaps.device)
    for i, (w_ceil, h_ceil) in enumerate(zip(widths_ceil.tolist(), heights_ceil.tolist())):
        resized = F.interpolate(
            heatmaps[i].float()[:, None],
            size=(int(h_ceil), int(w_ceil)),
            mode="bicubic",
            align_corners=False,
        )[:, 0]
        flat = resized.reshape(num_keypoints, -1).argmax(dim=1)
        x_int = flat % int(w_ceil)
        y_int = torch.div(flat - x_int, int(w_ceil), rounding_mode="floor")
        keypoints[i, :, 0] = (x_int.float() + 0.5) * (widths[i] / w_ceil) + boxes[i, 0]
        keypoints[i, :, 1] = (y_int.float() + 0.5) * (heights[i] / h_ceil) + boxes[i, 1]
        keypoints[i, :, 2] = 1.0
        scores[i] = resized[channel, y_int, x_int]
    return keypoints, scores
