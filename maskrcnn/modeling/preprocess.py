"""Input side of the model: from the image frame to the network frame.

Images arrive as [3, H, W] RGB floats in [0, 1] (the image frame: the caller's pixels). They
are scaled (``pixel_scale``), put in the weights' channel order, normalised, resized so the
short side is ``min_size`` (the long side at most ``max_size``; the same bilinear resize as
torchvision), and padded into one batch: the network frame, in which every stage up to the
RoI heads works. :mod:`maskrcnn.modeling.postprocess` maps detections back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import InputConfig
from maskrcnn.structures import ImageList


def resize_image(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Resizes [C, H, W] so the short side is ``min_size`` unless the long side passes ``max_size``.

    The scale is ``min(min_size / short, max_size / long)`` and the output size is recomputed
    from it (``floor(H * scale)``), as torchvision's transform does.
    """
    h, w = image.shape[-2:]
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return F.interpolate(
        image[None],
        scale_factor=scale,
        mode="bilinear",
        recompute_scale_factor=True,
        align_corners=False,
    )[0]


class Preprocessor(nn.Module):
    """Normalises, resizes and batches images: image frame -> network frame."""

    pixel_mean: Tensor  # [3], in the scaled space and channel order of the weights
    pixel_std: Tensor  # [3]

    def __init__(self, *, cfg: InputConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std), persistent=False)

    def normalize(self, image: Tensor) -> Tensor:
        """[3, H, W] RGB in [0, 1] -> the network's input space."""
        if self.cfg.pixel_scale != 1.0:
            image = image * self.cfg.pixel_scale
        if self.cfg.channel_order == "BGR":
            image = image.flip(0)
        mean = self.pixel_mean.to(image)[:, None, None]
        std = self.pixel_std.to(image)[:, None, None]
        return (image - mean) / std

    def forward(
        self, images: list[Tensor], *, min_size: int | None = None, resize: bool = True
    ) -> ImageList:
        """Batches ``images`` ([3, H_i, W_i] floats in [0, 1]) for the network.

        With ``resize=False`` (training) images keep their size: the data pipeline chose it.
        """
        if min_size is None:
            min_size = self.cfg.min_size[-1]
        prepared = []
        for i, image in enumerate(images):
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"images[{i}]: expected a [3, H, W] tensor, got {shape}")
            if not image.is_floating_point():
                raise ValueError(f"images[{i}]: expected floats in [0, 1], got {image.dtype}")
            image = self.normalize(image)
            prepared.append(resize_image(image, min_size, self.cfg.max_size) if resize else image)
        return ImageList.from_tensors(prepared, size_divisibility=self.cfg.size_divisibility)
