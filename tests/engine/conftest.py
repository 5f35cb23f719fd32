"""Fixtures for engine tests: a tiny COCO set on disk and a real, tiny, randomised model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from engine.tiny_coco import NAMES, write_tiny_coco
from helpers import randomize_

from maskrcnn.config import preset
from maskrcnn.modeling import build_model


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
