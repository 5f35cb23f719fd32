"""A tiny COCO set on disk and a ground-truth "model", shared by several test folders."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch import nn

from maskrcnn.data.annotations import encode_binary_mask
from maskrcnn.structures import Instances

CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "bar"}]
NAMES = ("__background__", "square", "bar")  # model labels 1, 2 -> COCO ids 3, 7
# (height, width), then boxes (x0, y0, x1, y1), integer and exclusive, with COCO category ids.
LAYOUT = [
    ((48, 64), [((4, 6, 20, 22), 3), ((30, 10, 60, 18), 7)]),
    ((56, 40), [((8, 8, 32, 40), 3)]),
    ((40, 72), [((2, 2, 14, 14), 3), ((20, 25, 70, 35), 7), ((40, 4, 56, 20), 3)]),
]


def write_tiny_coco(root: Path) -> tuple[Path, Path]:
    """Writes images/*.png and ann.json (rectangles whose masks fill their boxes)."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    gen = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, ((h, w), objects) in enumerate(LAYOUT, start=1):
        pixels = (gen.random((h, w, 3)) * 60 + 90).astype(np.uint8)
        for (x0, y0, x1, y1), cat in objects:
            mask = np.zeros((h, w), np.uint8)
            mask[y0:y1, x0:x1] = 1
            pixels[mask.astype(bool)] = (230, 40, 40) if cat == 3 else (40, 40, 230)
            rle = encode_binary_mask(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": rle,
                }
            )
        name = f"img{image_id}.png"
        Image.fromarray(pixels).save(image_dir / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    ann = root / "ann.json"
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    ann.write_text(json.dumps(data))
    return ann, image_dir


class GroundTruthModel(nn.Module):
    """A stand-in for MaskRCNN whose ``detect`` returns the ground truth (optionally shifted).

    Images are recognised by their size (each image of LAYOUT has its own). RoI-frame masks are
    all ones, which paste back to exactly the rectangle of an integer box.
    """

    def __init__(self, shift: float = 0.0, empty: bool = False) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(
            mask_head=SimpleNamespace(paste="grid_sample", threshold=0.5), category_names=NAMES
        )
        self.shift = shift
        self.empty = empty
        self.by_size = {size: objects for size, objects in LAYOUT}
        self.calls = 0

    def detect(self, images: list[torch.Tensor], *, paste_masks: bool = True) -> list[Instances]:
        assert not paste_masks, "the evaluator must ask for RoI-frame masks"
        self.calls += 1
        out = []
        for image in images:
            size = (int(image.shape[1]), int(image.shape[2]))
            objects = [] if self.empty else self.by_size[size]
            n = len(objects)
            boxes = torch.tensor([b for b, _ in objects], dtype=torch.float32).reshape(n, 4)
            labels = torch.tensor([1 if c == 3 else 2 for _, c in objects], dtype=torch.int64)
            out.append(
                Instances(
                    image_size=size,
                    boxes=boxes + self.shift,
                    labels=labels,
                    scores=torch.linspace(0.9, 0.6, n),
                    masks=torch.ones(n, 1, 28, 28),
                    category_names=[NAMES[i] for i in labels.tolist()],
                )
            )
        return out
