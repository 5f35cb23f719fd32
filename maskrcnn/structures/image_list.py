"""A batch of images of different sizes, padded into one tensor."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ImageList:
    """Padded image batch.

    Attributes:
        tensor: [B, C, H_pad, W_pad] images, zero-padded at the bottom and right.
        image_sizes: (h, w) of each image inside ``tensor`` before padding.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.image_sizes)

    @property
    def padded_size(self) -> tuple[int, int]:
        """(H_pad, W_pad) of the batch tensor."""
        return int(self.tensor.shape[-2]), int(self.tensor.shape[-1])

    @staticmethod
    def from_tensors(images: list[Tensor], *, size_divisibility: int = 32) -> ImageList:
        """Pads images ([C, H_i, W_i] each) to a common size divisible by ``size_divisibility``."""
        if not images:
            raise ValueError("images: expected at least one image")
        channels = images[0].shape[0]
        max_h = max(int(img.shape[-2]) for img in images)
        max_w = max(int(img.shape[-1]) for img in images)
        if size_divisibility > 1:
            max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
            max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
        batch = images[0].new_zeros((len(images), channels, max_h, max_w))
        for slot, img in zip(batch, images):
            slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        return ImageList(batch, sizes)

    def to(self, device: torch.device | str) -> ImageList:
        return ImageList(self.tensor.to(device), list(self.image_sizes))
