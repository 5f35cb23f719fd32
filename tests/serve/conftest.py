"""Serving fixtures: an upload and the image it decodes to."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from serve_checks import png_bytes


@pytest.fixture(scope="session")
def upload(test_images) -> tuple[bytes, torch.Tensor]:
    """A PNG upload (237 x 301) and the [3, H, W] image it decodes to."""
    data = png_bytes(test_images[0])
    with Image.open(io.BytesIO(data)) as img:
        decoded = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
    return data, decoded
