"""Reading images into the model's input format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor


def load_image(path: str | Path) -> Tensor:
    """Reads an image file as a [3, H, W] float RGB tensor in [0, 1].

    EXIF orientation is applied; grayscale, palette, RGBA and 16-bit images are converted.
    A missing or unreadable file raises an error that names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return pil_to_tensor(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def pil_to_tensor(img: Image.Image) -> Tensor:
    """PIL image of any mode -> [3, H, W] float RGB in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = torch.from_numpy(array / peak).clamp(0, 1)
        return gray[None].expand(3, -1, -1).contiguous()
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA") else img.convert("RGB")
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def to_image_tensor(image: Any) -> Tensor:
    """A path, PIL image or [3, H, W] tensor -> [3, H, W] float tensor in [0, 1]."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return pil_to_tensor(image)
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image: expected a [3, H, W] tensor, got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float() / 255.0
        return image
    raise TypeError(f"image: expected a path, PIL image or tensor, got {type(image).__name__}")
