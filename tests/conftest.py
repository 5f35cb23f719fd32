"""Shared fixtures: torchvision reference models with randomised weights, and our twins."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def test_images() -> list[torch.Tensor]:
    """Two odd-sized RGB images in [0, 1] with some structure (smooth blobs plus noise)."""
    gen = torch.Generator().manual_seed(123)
    images = []
    for h, w in [(237, 301), (260, 199)]:
        ys = torch.linspace(0, 1, h)[:, None]
        xs = torch.linspace(0, 1, w)[None, :]
        base = torch.stack(
            [
                0.5 + 0.4 * torch.sin(6 * xs + 3 * ys),
                0.5 + 0.4 * torch.cos(5 * ys - 2 * xs),
                ((xs - 0.5) ** 2 + (ys - 0.4) ** 2 < 0.05).float() * 0.8,
            ]
        )
        images.append((base + 0.1 * torch.rand(3, h, w, generator=gen)).clamp(0, 1))
    return images
