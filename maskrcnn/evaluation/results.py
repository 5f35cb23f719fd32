"""COCO's side of evaluation and prediction files: category ids, masks as RLE, result records.

Masks are pasted and encoded one detection at a time: a detection's RoI-frame mask
([1, 1, M, M]) is pasted into one image-sized plane, thresholded, and run-length encoded at once,
so no [N, H, W] array ever exists. Model labels are mapped to the dataset's COCO category ids
by category name, which works for every label layout we have (contiguous 1..K, torchvision's
91 raw ids, detectron2's 80 + background).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from torch import Tensor

from maskrcnn.data.annotations import encode_binary_mask
from maskrcnn.ops.paste import PasteFn, paste_function
from maskrcnn.structures import Instances

# Label names that stand for "no category" in our label layouts.
PLACEHOLDER_NAMES = frozenset({"", "N/A", "__background__"})


def paste_one(
    roi_mask: Tensor, box: Tensor, image_size: tuple[int, int], *, paste: PasteFn, threshold: float
) -> np.ndarray:
    """One detection's mask in the image: [1, M, M] RoI probabilities -> [H, W] bool."""
    plane = paste(roi_mask[None], box[None], image_size)[0, 0]  # [H, W]
    return (plane >= threshold).cpu().numpy()


def iter_encoded_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    *,
    paste: str,
    threshold: float,
) -> Iterator[dict[str, Any]]:
    """RLEs of detections' masks, pasting one at a time.

    Args:
        masks: [N, 1, M, M] RoI-frame probabilities.
        boxes: [N, 4] xyxy in image pixels.
        image_size: (H, W) of the image.
        paste: ``"grid_sample"`` or ``"torchvision"``.
        threshold: probability at or above which a pixel belongs to the instance.

    Yields:
        N compressed RLE dicts, in order.
    """
    fn = paste_function(paste)
    for i in range(masks.shape[0]):
        yield encode_binary_mask(
            paste_one(masks[i], boxes[i], image_size, paste=fn, threshold=threshold)
        )


def load_coco(ann_file: str | Path) -> COCO:
    """Reads a COCO annotation file quietly; a missing or malformed file names itself."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(ann_file))
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as err:
        raise ValueError(f"{ann_file}: not a COCO annotation file ({err!r})") from err


@dataclass(frozen=True)
class LabelMap:
    """Which model label is which COCO category.

    Attributes:
        coco_ids: model label -> COCO category id; detections of other labels are not scored.
        names: model label -> category name.
    """

    coco_ids: dict[int, int]
    names: dict[int, str]

    @staticmethod
    def contiguous(categories: Sequence[Mapping[str, Any]]) -> LabelMap:
        """Labels 1..K for the categories sorted by COCO id (our datasets' convention)."""
        ordered = sorted(categories, key=lambda c: int(c["id"]))
        return LabelMap(
            coco_ids={i + 1: int(c["id"]) for i, c in enumerate(ordered)},
            names={i + 1: str(c["name"]) for i, c in enumerate(ordered)},
        )

    @staticmethod
    def from_names(
        label_names: Mapping[int, str] | Sequence[str],
        categories: Sequence[Mapping[str, Any]],
        *,
        model: str = "model",
        dataset: str = "dataset",
    ) -> LabelMap:
        """Matches labels to COCO categories by name; any mismatch is a ``ValueError``.

        Args:
            label_names: name per label (a sequence indexed by label, or a mapping).
                Placeholder names ("", "N/A", "__background__") are ignored.
            categories: the dataset's COCO ``categories`` entries (``id``, ``name``).
            model, dataset: how to name the two sides in an error message.
        """
        items = label_names.items() if isinstance(label_names, Mapping) else enumerate(label_names)
        by_name: dict[str, int] = {}
        for label, name in items:
            if name in PLACEHOLDER_NAMES:
                continue
            if name in by_name:
                raise ValueError(f"{model}: category name {name!r} is used by two labels")
            by_name[name] = int(label)
        ids_by_name: dict[str, int] = {}
        for cat in categories:
            if cat["name"] in ids_by_name:
                raise ValueError(f"{dataset}: category name {cat['name']!r} appears twice")
            ids_by_name[str(cat["name"])] = int(cat["id"])
        missing = sorted(set(ids_by_name) - set(by_name))
        extra = sorted(set(by_name) - set(ids_by_name))
        if not by_name or missing or extra:
            raise ValueError(
                f"category names of {model} do not match {dataset}: "
                f"missing from the model {missing}, not in the dataset {extra}"
                + ("" if by_name else " (the model has no category names)")
            )
        return LabelMap(
            coco_ids={label: ids_by_name[name] for name, label in by_name.items()},
            names={label: name for name, label in by_name.items()},
        )


def resolve_label_map(
    categories: Any, coco_categories: Sequence[Mapping[str, Any]], model_names: Sequence[str]
) -> LabelMap:
    """A :class:`LabelMap` from what the caller gave.

    Args:
        categories: None (match ``model_names`` by name, or labels 1..K by sorted id when the
            model has no names), a :class:`LabelMap`, a mapping label -> COCO id, a
            :class:`maskrcnn.data.categories.CategoryMap` (``category_ids``: label k is
            ``category_ids[k - 1]``), or any object with ``names_by_label`` (matched by name).
        coco_categories: the dataset's COCO ``categories`` entries.
        model_names: the model's ``cfg.category_names``.
    """
    if isinstance(categories, LabelMap):
        return categories
    if categories is None:
        if any(n not in PLACEHOLDER_NAMES for n in model_names):
            return LabelMap.from_names(model_names, coco_categories)
        return LabelMap.contiguous(coco_categories)
    if isinstance(categories, Mapping):
        known = {int(c["id"]): str(c["name"]) for c in coco_categories}
        unknown = sorted(int(v) for v in categories.values() if int(v) not in known)
        if unknown:
            raise ValueError(f"categories: COCO ids {unknown} are not in the dataset")
        coco_ids = {int(k): int(v) for k, v in categories.items()}
        return LabelMap(coco_ids, {k: known[v] for k, v in coco_ids.items()})
    ids = getattr(categories, "category_ids", None)  # maskrcnn.data.CategoryMap: label k = ids[k-1]
    if ids is not None:
        return resolve_label_map(
            {k + 1: int(c) for k, c in enumerate(ids)}, coco_categories, model_names
        )
    names = getattr(categories, "names_by_label", None)
    if names is None:
        raise TypeError(
            "categories: expected None, a LabelMap, a mapping label -> COCO id, or an object "
            f"with names_by_label; got {type(categories).__name__}"
        )
    return LabelMap.from_names(names, coco_categories, model="categories")


def detections_to_coco(
    instances: Instances,
    image_id: int,
    label_map: LabelMap,
    *,
    paste: str,
    threshold: float,
) -> list[dict[str, Any]]:
    """One image's detections as COCO result records.

    Args:
        instances: boxes [N, 4] xyxy in image pixels, ``scores`` [N], ``labels`` [N],
            ``masks`` [N, 1, M, M] RoI-frame probabilities (or None: boxes only), and
            optionally ``keypoints`` [N, K, 3] (x, y, v) in image pixels.
        image_id: the COCO image id.
        label_map: model label -> COCO category id; other labels are dropped.
        paste, threshold: how masks are pasted and binarised.

    Returns:
        Records with ``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``, (with
        masks) ``segmentation`` (compressed RLE, counts as str) and (with keypoints)
        ``keypoints``, COCO's flat ``[x1, y1, v1, ...]`` (the box's score scores them).
    """
    if instances.scores is None:
        raise ValueError(f"image {image_id}: detections have no scores")
    boxes = instances.boxes.detach().float().cpu()
    labels = instances.labels.tolist()
    scores = instances.scores.tolist()
    keep = [i for i, label in enumerate(labels) if label in label_map.coco_ids]
    masks = instances.masks
    if masks is not None and (masks.dim() != 4 or masks.shape[1] != 1):
        raise ValueError(
            f"image {image_id}: masks must be RoI-frame [N, 1, M, M] (detect(paste_masks=False)),"
            f" got {tuple(masks.shape)}"
        )
    rles: list[dict[str, Any] | None] = [None] * len(keep)
    if masks is not None and keep:
        picked = masks[keep].detach().float()
        rles = list(
            iter_encoded_masks(
                picked, boxes[keep], instances.image_size, paste=paste, threshold=threshold
            )
        )
    keypoints = None
    if instances.keypoints is not None:
        keypoints = instances.keypoints.detach().float().cpu().flatten(1).tolist()
    records = []
    for i, rle in zip(keep, rles):
        x0, y0, x1, y1 = boxes[i].tolist()
        record: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": label_map.coco_ids[labels[i]],
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(scores[i]),
        }
        if rle is not None:
            record["segmentation"] = rle
        if keypoints is not None:
            record["keypoints"] = keypoints[i]
        records.append(record)
    return records
