"""Where evaluation images and ground truth come from: a COCO file and folder, or a dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from torch import Tensor

from maskrcnn.data.io import load_image
from maskrcnn.evaluation.results import load_coco


@dataclass
class EvalSource:
    """Images to evaluate, in a fixed order, with the COCO ground truth they are scored on.

    Attributes:
        coco: the ground truth (pycocotools).
        name: how to refer to the data in messages (the annotation file, usually).
        dataset: a dataset of samples with ``image`` [3, H, W] and ``image_id``, or None to
            read ``image_dir / file_name`` for each of ``image_ids``.
        image_dir: folder of the images (files mode).
        image_ids: the images in order (files mode).
    """

    coco: COCO
    name: str
    dataset: Any = None
    image_dir: Path | None = None
    image_ids: Sequence[int] = ()

    def __len__(self) -> int:
        return len(self.dataset) if self.dataset is not None else len(self.image_ids)

    def load(self, index: int) -> tuple[Tensor, int]:
        """The index-th image ([3, H, W] floats in [0, 1]) and its COCO image id."""
        if self.dataset is not None:
            sample = self.dataset[index]
            image, image_id = getattr(sample, "image", None), getattr(sample, "image_id", None)
            if image is None or image_id is None:
                raise TypeError(
                    f"{self.name}[{index}]: expected a sample with image and image_id, "
                    f"got {type(sample).__name__}"
                )
            if int(image_id) not in self.coco.imgs:
                raise ValueError(f"{self.name}[{index}]: image_id {image_id} not in the COCO file")
            return image, int(image_id)
        assert self.image_dir is not None
        image_id = int(self.image_ids[index])
        info = self.coco.imgs[image_id]
        image = load_image(self.image_dir / info["file_name"])
        if (image.shape[1], image.shape[2]) != (info.get("height"), info.get("width")):
            raise ValueError(
                f"{self.image_dir / info['file_name']}: image is {image.shape[1]}x{image.shape[2]}"
                f" but {self.name} says {info.get('height')}x{info.get('width')} (image {image_id})"
            )
        return image, image_id


def open_source(data: Any) -> EvalSource:
    """An :class:`EvalSource` from ``(ann_file, image_dir)`` or a dataset object.

    A dataset must yield samples with ``image`` and ``image_id`` and carry its ground truth as
    ``coco`` (a pycocotools COCO) or ``ann_file`` (a path).
    """
    if isinstance(data, EvalSource):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        ann_path, image_dir = Path(data[0]), Path(data[1])
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {image_dir}")
        coco = load_coco(ann_path)
        return EvalSource(
            coco=coco, name=str(ann_path), image_dir=image_dir, image_ids=sorted(coco.getImgIds())
        )
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise TypeError(
            f"data: expected (ann_file, image_dir) or a dataset, got {type(data).__name__}"
        )
    coco = getattr(data, "coco", None)
    ann_file = getattr(data, "ann_file", None)
    if not isinstance(coco, COCO):
        if ann_file is None:
            raise TypeError(
                f"data: {type(data).__name__} has neither `coco` nor `ann_file`; COCO "
                "evaluation needs the original annotations"
            )
        coco = load_coco(ann_file)
    name = str(ann_file) if ann_file is not None else type(data).__name__
    return EvalSource(coco=coco, name=name, dataset=data)
