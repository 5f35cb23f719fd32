"""Reading images into the model's input format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

EXIF_ORIENTATION = 0x0112
# EXIF orientations that rotate by 90 or 270 degrees, i.e. swap width and height.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
# Everything PIL raises for a file it cannot decode (truncated, corrupt, a bomb, bad EXIF).
DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded; the message names the file."""


def load_image(path: str | Path) -> Tensor:
    """Reads an image file as a [3, H, W] float RGB tensor in [0, 1].

    EXIF orientation is applied; grayscale, palette, RGBA and 16-bit images are converted
    (alpha is dropped; 16- and 32-bit single-channel images are scaled by their own maximum,
    see :func:`pil_to_tensor`). A missing file raises
    ``FileNotFoundError`` and an undecodable one :class:`ImageReadError`; both name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return pil_to_tensor(img)
    except DECODE_ERRORS as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image as :func:`load_image` returns it, from the header only.

    The EXIF orientation is taken into account (a 90-degree rotation swaps the sides); the
    pixel data is not decoded, so a corrupt body goes unnoticed here.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = exif_orientation(img)
    except DECODE_ERRORS as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return width, height
    return height, width


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1..8) of an open image; 1 when absent or unreadable."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except DECODE_ERRORS:
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def pil_to_tensor(img: Image.Image) -> Tensor:
    """PIL image of any mode -> [3, H, W] float RGB in [0, 1].

    8-bit modes are divided by 255. High-bit-depth single-channel images (16-bit PNG and TIFF,
    PIL modes ``I;16*`` and ``I``) are divided by their own maximum, so the brightest pixel is
    1 and 0 stays black: such files rarely use their full range (microscopy often stores 8- or
    12-bit data in 16 bits; divided by 65535 it would be almost black). An all-zero image stays
    zero; negative values (32-bit ``I``) are clipped to 0.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float32)
        peak = max(float(array.max(initial=0)), 1.0)
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
