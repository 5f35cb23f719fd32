"""Shared fixtures: test images, a tiny COCO set on disk and a real, tiny, randomised model."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from tiny_coco import NAMES, write_tiny_coco

from maskrcnn.config import preset
from maskrcnn.modeling import build_model
from maskrcnn.modeling.randomize import randomize_

torch.set_num_threads(2)
# Training runs take a fixed thread count (runtime.threads' default would follow the cores'
# load, which another process on a CI machine could change between two runs that a test
# compares bit for bit); the governor's own tests clear it.
os.environ["OMP_NUM_THREADS"] = "2"


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


@pytest.fixture
def tiny_coco(tmp_path: Path) -> tuple[Path, Path]:
    return write_tiny_coco(tmp_path / "coco")


@pytest.fixture(scope="session")
def tiny_model() -> torch.nn.Module:
    """A randomised r18_fpn with the tiny set's categories a 64-pixel input size, few boxes."""
    cfg = preset("r18_fpn", num_classes=3).replace(category_names=NAMES)
    cfg = cfg.replace(
        input=dataclasses.replace(cfg.input, min_size=(64,), max_size=96),
        rpn=dataclasses.replace(cfg.rpn, pre_nms_topk_test=200, post_nms_topk_test=100),
        box_head=dataclasses.replace(cfg.box_head, detections_per_image=20),
    )
    torch.manual_seed(0)
    return randomize_(build_model(cfg), seed=0).eval()
