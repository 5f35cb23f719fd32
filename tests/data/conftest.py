"""Fixtures for the data tests: tiny COCO files written into ``tmp_path``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

# Non-contiguous ids, not in id order: labels are 1 = dog (3), 2 = cat (7), 3 = fox (11).
CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 11, "name": "fox"}]


MakeCoco = Callable[..., tuple[Path, Path]]


@pytest.fixture
def make_coco(tmp_path: Path) -> MakeCoco:
    """``make_coco(images, annotations, categories=CATEGORIES, write=True)`` -> (json, image dir).

    Writes the annotation file and, for each image entry, a random RGB PNG of its size.
    """

    def make(
        images: list[dict[str, Any]],
        annotations: list[dict[str, Any]],
        categories: list[dict[str, Any]] | None = None,
        *,
        write: bool = True,
        name: str = "ann.json",
    ) -> tuple[Path, Path]:
        image_dir = tmp_path / "images"
        image_dir.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        if write:
            for img in images:
                if "height" not in img or "width" not in img:
                    continue
                pixels = rng.integers(0, 256, size=(img["height"], img["width"], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(image_dir / img["file_name"])
        data = {
            "images": images,
            "annotations": annotations,
            "categories": CATEGORIES if categories is None else categories,
        }
        ann_file = tmp_path / name
        ann_file.write_text(json.dumps(data))
        return ann_file, image_dir

    return make
