"""COCO-format instance segmentation datasets for training.

:class:`CocoDataset` reads an annotation file with pycocotools, checks it up front (missing
image files, unknown ids, malformed entries: one error naming the file and the offenders),
and serves :class:`Sample` objects whose targets use contiguous labels (:class:`CategoryMap`).
Crowd regions and degenerate annotations are not training targets; they are counted in
:class:`DatasetStats`. Images without annotations stay in the dataset as negatives.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from maskrcnn.data.annotations import (
    DatasetError,
    Kind,
    Problem,
    bbox_xyxy,
    classify,
    decode_mask,
    outside_image_dir,
    read_coco_json,
    scan,
)
from maskrcnn.data.categories import CategoryMap, placeholder_backgrounds
from maskrcnn.data.io import ImageReadError, image_size, load_image
from maskrcnn.data.keypoints import KeypointSpec, count_visible, keypoints_array, keypoints_problem
from maskrcnn.structures import Instances

__all__ = ["BadImageError", "CategoryMap", "CocoDataset", "DatasetError", "DatasetStats", "Sample"]

logger = logging.getLogger(__name__)

_MAX_LISTED = 5  # offenders named per kind of problem in an error message


class BadImageError(DatasetError):
    """An image that cannot be used (unreadable, or not the size the annotation file says)."""


@dataclass
class Sample:
    """One training or evaluation example.

    Attributes:
        image: [3, H, W] float RGB in [0, 1].
        gt: ground truth: ``boxes`` [G, 4] float32 xyxy, ``labels`` [G] int64 (1..K),
            ``masks`` [G, H, W] bool, ``category_names``, and for a keypoint dataset
            ``keypoints`` [G, K, 3] float32 (x, y, v); G may be 0.
        image_id: the COCO image id.
        file_name: the image's ``file_name`` in the annotation file.
    """

    image: Tensor
    gt: Instances
    image_id: int
    file_name: str


@dataclass
class DatasetStats:
    """What a :class:`CocoDataset` left out of the training targets, and why.

    The first group is counted once, when the dataset is built. The second is counted while
    samples are loaded, in the loading process (each DataLoader worker has its own copy).
    """

    images: int = 0
    annotations: int = 0
    targets: int = 0  # annotations used as training targets
    negative_images: int = 0  # images with no target at all (kept, G = 0)
    crowd: int = 0
    degenerate_boxes: int = 0
    degenerate_polygons: int = 0
    bad_coordinates: int = 0  # polygons with non-finite or far-out coordinates (dropped)
    outside_image_dir: int = 0  # images whose file_name is absolute or has '..' (read, warned)
    missing_segmentations: int = 0
    # counted while loading
    empty_masks: int = 0
    dropped_by_transforms: int = 0
    bad_images_skipped: int = 0
    few_keypoints_images: int = 0  # left out by min_keypoints_per_image

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_DROP_COUNTERS = {
    Kind.CROWD: "crowd",
    Kind.DEGENERATE_BOX: "degenerate_boxes",
    Kind.DEGENERATE_POLYGON: "degenerate_polygons",
    Kind.BAD_COORDINATES: "bad_coordinates",
    Kind.MISSING_SEGMENTATION: "missing_segmentations",
}


class CocoDataset(Dataset[Sample]):
    """A COCO annotation file and its image folder as a dataset of :class:`Sample`.

    Args:
        ann_file: COCO instances JSON (polygons, compressed or uncompressed RLE).
        image_dir: folder that ``file_name`` entries are relative to.
        transforms: applied to each :class:`Sample` (see ``maskrcnn.data.transforms``).
        skip_bad_images: an unreadable image is logged, counted and replaced by the next good
            one instead of raising.
        categories: the label map to use (e.g. the training set's, for a validation set);
            by default built from the file's ``categories``.
        check_sizes: also read each image's header at construction to compare its size with
            the file's ``width``/``height`` (slower; otherwise a mismatch surfaces on loading).
        min_keypoints_per_image: for a keypoint dataset, leave out images whose targets have
            fewer labelled keypoints (v > 0) in all (torchvision's references use 10 for
            training; 0 keeps every image).

    A dataset whose categories carry ``keypoints`` names (COCO person keypoints) is a keypoint
    dataset: ``self.keypoints`` is its :class:`~maskrcnn.data.keypoints.KeypointSpec` and every
    target has keypoints (all v = 0 for an annotation without any: a box and mask target that
    adds nothing to the keypoint loss). Crowd annotations are no targets, as for masks.

    Raises:
        DatasetError: at construction, naming the annotation file and the first offenders of
            each kind, when it is malformed, refers to missing image files, unknown images or
            unknown categories, or has RLE masks of the wrong size.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        *,
        transforms: Callable[[Sample], Sample] | None = None,
        skip_bad_images: bool = False,
        categories: CategoryMap | None = None,
        check_sizes: bool = False,
        min_keypoints_per_image: int = 0,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.skip_bad_images = skip_bad_images
        data = read_coco_json(self.ann_file)
        self.categories = _category_map(data, categories, self.ann_file)
        self.keypoints = KeypointSpec.from_coco(data["categories"], source=str(self.ann_file))
        scanned = scan(data, self.categories)
        self._problems: list[Problem] = list(scanned.problems)
        self._images = {img["id"]: img for img in scanned.images}
        # sorted ids (COCO ids are ints; strings, if a file uses them, come after)
        self.image_ids: list[int] = sorted(self._images, key=lambda i: (isinstance(i, str), i))
        self._targets: dict[int, list[dict[str, Any]]] = {i: [] for i in self.image_ids}
        self.stats = DatasetStats(images=len(self.image_ids), annotations=len(data["annotations"]))
        for ann in scanned.annotations:
            img = self._images[ann["image_id"]]
            problem = classify(ann, img["height"], img["width"])
            if problem is None and self.keypoints is not None:
                detail = keypoints_problem(ann, self.keypoints.num_keypoints)
                if detail is not None:
                    problem = Problem(Kind.BAD_KEYPOINTS, f"annotation {ann['id']}", detail)
            if problem is None:
                self._targets[ann["image_id"]].append(ann)
            elif problem.kind in _DROP_COUNTERS:
                counter = _DROP_COUNTERS[problem.kind]
                setattr(self.stats, counter, getattr(self.stats, counter) + 1)
                if problem.kind is Kind.BAD_COORDINATES:
                    logger.warning(
                        "%s: dropping %s (image %s): %s",
                        self.ann_file,
                        problem.subject,
                        img["file_name"],
                        problem.detail,
                    )
            else:
                self._problems.append(problem)
        if self.keypoints is not None and min_keypoints_per_image > 0:
            few = [
                i
                for i, anns in self._targets.items()
                if sum(count_visible(a) for a in anns) < min_keypoints_per_image
            ]
            self.stats.few_keypoints_images = len(few)
            dropped = set(few)
            self.image_ids = [i for i in self.image_ids if i not in dropped]
            for i in few:
                del self._targets[i]
        self.stats.targets = sum(len(anns) for anns in self._targets.values())
        self.stats.negative_images = sum(not anns for anns in self._targets.values())
        self._bad: set[int] = set()
        self._warn_outside_image_dir()
        self.validate(check_sizes=check_sizes)
        self.coco = _silent_coco(data)

    def _warn_outside_image_dir(self) -> None:
        outside = [
            self._images[i]["file_name"]
            for i in self.image_ids
            if outside_image_dir(self._images[i]["file_name"])
        ]
        self.stats.outside_image_dir = len(outside)
        if outside:
            more = f", ... {len(outside) - _MAX_LISTED} more" if len(outside) > _MAX_LISTED else ""
            logger.warning(
                "%s: %d image file(s) outside the image folder %s (absolute, or '..') are read "
                "from there: %s%s",
                self.ann_file,
                len(outside),
                self.image_dir,
                ", ".join(outside[:_MAX_LISTED]),
                more,
            )

    def validate(self, *, check_sizes: bool = False) -> None:
        """Raises one :class:`DatasetError` listing every problem that would stop training.

        Cheap: no pixel is decoded. Image files are checked for existence (and, with
        ``check_sizes``, their header is read to compare sizes with the annotation file).
        """
        problems = list(self._problems)
        for image_id in self.image_ids:
            img = self._images[image_id]
            path = self.image_dir / img["file_name"]
            if not path.is_file():
                problems.append(Problem(Kind.MISSING_IMAGE, _subject(img), "file not found"))
            elif check_sizes:
                try:
                    size = image_size(path)
                except ImageReadError as err:
                    problems.append(Problem(Kind.UNREADABLE_IMAGE, _subject(img), str(err)))
                    continue
                if size != (img["height"], img["width"]):
                    detail = f"file is {size[1]}x{size[0]}, annotations say "
                    detail += f"{img['width']}x{img['height']} (w x h)"
                    problems.append(Problem(Kind.SIZE_MISMATCH, _subject(img), detail))
        if problems:
            raise DatasetError(self._describe(problems))

    def _describe(self, problems: list[Problem]) -> str:
        lines = [f"{self.ann_file}: {len(problems)} problem(s) (images in {self.image_dir}):"]
        by_kind: dict[Kind, list[Problem]] = {}
        for p in problems:
            by_kind.setdefault(p.kind, []).append(p)
        for kind, found in by_kind.items():
            named = ", ".join(
                f"{p.subject} ({p.detail})" if p.detail else p.subject for p in found[:_MAX_LISTED]
            )
            more = f", ... {len(found) - _MAX_LISTED} more" if len(found) > _MAX_LISTED else ""
            lines.append(f"  {kind.value} x{len(found)}: {named}{more}")
        lines.append(
            f"  (`maskrcnn data check --ann {self.ann_file} --images {self.image_dir}` "
            "reports everything)"
        )
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        if not self.skip_bad_images:
            return self._load(index)
        for step in range(len(self)):
            i = (index + step) % len(self)
            if i in self._bad:
                continue
            try:
                return self._load(i)
            except BadImageError as err:
                self._bad.add(i)
                self.stats.bad_images_skipped += 1
                logger.warning("skipping image: %s", err)
        raise DatasetError(f"{self.ann_file}: no readable image left in {self.image_dir}")

    def read_image(self, index: int) -> Tensor:
        """Image ``index`` decoded, [3, H, W] in [0, 1], at the size the annotation file gives.

        Raises:
            BadImageError: the file is missing or cannot be decoded, or its size differs from
                the annotation file's (the message names the file and the image id).
        """
        image_id = self.image_ids[index]
        img = self._images[image_id]
        path = self.image_dir / img["file_name"]
        try:
            image = load_image(path)
        except (FileNotFoundError, ImageReadError) as err:
            raise BadImageError(f"{self.ann_file}: image {image_id}: {err}") from err
        expected = (img["height"], img["width"])
        if tuple(image.shape[-2:]) != expected:
            got = (int(image.shape[-2]), int(image.shape[-1]))
            hint = " (EXIF orientation rotates it)" if got == expected[::-1] else ""
            raise BadImageError(
                f"{self.ann_file}: image {image_id} {path} is {got[1]}x{got[0]}{hint}, the "
                f"annotation file says {expected[1]}x{expected[0]} (w x h)"
            )
        return image

    def _load(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        img = self._images[image_id]
        image = self.read_image(index)
        sample = Sample(
            image=image, gt=self.targets(index), image_id=image_id, file_name=img["file_name"]
        )
        if self.transforms is not None:
            before = len(sample.gt)
            sample = self.transforms(sample)
            self.stats.dropped_by_transforms += before - len(sample.gt)
        return sample

    def targets(self, index: int) -> Instances:
        """The ground truth of image ``index`` without reading the image.

        Returns:
            Instances with ``boxes`` [G, 4] float32 xyxy (clipped to the image), ``labels`` [G]
            int64, ``masks`` [G, H, W] bool and ``category_names``. Annotations whose mask is
            empty once rasterised are dropped (``stats.empty_masks``).
        """
        image_id = self.image_ids[self._check_index(index)]
        img = self._images[image_id]
        h, w = img["height"], img["width"]
        boxes, labels, masks, keypoints = [], [], [], []
        num_keypoints = 0 if self.keypoints is None else self.keypoints.num_keypoints
        for ann in self._targets[image_id]:
            try:
                mask = decode_mask(ann["segmentation"], h, w)
            except (ValueError, TypeError) as err:
                raise DatasetError(
                    f"{self.ann_file}: annotation {ann['id']}: cannot decode its "
                    f"segmentation: {err}"
                ) from err
            if not mask.any():
                self.stats.empty_masks += 1
                continue
            boxes.append(bbox_xyxy(ann["bbox"], h, w))
            labels.append(self.categories.label(ann["category_id"]))
            masks.append(mask)
            if self.keypoints is not None:
                keypoints.append(keypoints_array(ann, num_keypoints))
        kps = None
        if self.keypoints is not None:
            kps = torch.from_numpy(
                np.stack(keypoints) if keypoints else np.zeros((0, num_keypoints, 3), np.float32)
            )
        return Instances(
            image_size=(h, w),
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor(labels, dtype=torch.int64),
            masks=torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w).bool(),
            category_names=[self.categories.name(k) for k in labels],
            keypoints=kps,
        )

    def aspect_ratios(self) -> list[float]:
        """Width / height of each image, from the annotation file (nothing is decoded)."""
        return [self._images[i]["width"] / self._images[i]["height"] for i in self.image_ids]

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images ({self.ann_file})")
        return index % n


def _category_map(data: dict[str, Any], given: CategoryMap | None, ann_file: Path) -> CategoryMap:
    placeholders = placeholder_backgrounds(data["categories"], data["annotations"])
    if placeholders and given is None:
        logger.warning(
            "%s: leaving out background placeholder categor%s %s (no annotations; the model "
            "has its own background class)",
            ann_file,
            "y" if len(placeholders) == 1 else "ies",
            ", ".join(f"{c.get('id')} {c.get('name')!r}" for c in placeholders),
        )
    kept = [c for c in data["categories"] if not any(c is p for p in placeholders)]
    try:
        in_file = CategoryMap.from_coco(kept, source=str(ann_file))
    except ValueError as err:
        raise DatasetError(str(err)) from err
    if given is None:
        return in_file
    for cid, name in zip(in_file.category_ids, in_file.names):
        if cid in given and given.name(given.label(cid)) != name:
            raise DatasetError(
                f"{ann_file}: category id {cid} is {name!r} here but "
                f"{given.name(given.label(cid))!r} in the given CategoryMap"
            )
    return given


def _subject(img: dict[str, Any]) -> str:
    return f"image {img['id']} ({img['file_name']})"


def _silent_coco(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO index of ``data`` (without its progress prints)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
