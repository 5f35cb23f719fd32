"""COCO annotation files without images: reading, structural checks, per-annotation triage.

Shared by :class:`maskrcnn.data.coco.CocoDataset` (which raises on errors and drops what is
degenerate) and :func:`maskrcnn.data.check.check_dataset` (which reports everything). Nothing
here decodes an image; :func:`decode_mask` is the only function that rasterises anything (and
:func:`encode_binary_mask` its inverse).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Container
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


class DatasetError(ValueError):
    """A problem with an annotation file or its images; the message names them."""


class Kind(str, Enum):
    """What can be wrong with (or worth knowing about) an annotation file."""

    INVALID_FILE = "invalid_file"
    MISSING_FIELD = "missing_field"
    DUPLICATE_ID = "duplicate_id"
    UNKNOWN_IMAGE = "unknown_image"
    UNKNOWN_CATEGORY = "unknown_category"
    BAD_SEGMENTATION = "bad_segmentation"
    BAD_KEYPOINTS = "bad_keypoints"
    MISSING_IMAGE = "missing_image"
    UNREADABLE_IMAGE = "unreadable_image"
    SIZE_MISMATCH = "size_mismatch"
    DEGENERATE_BOX = "degenerate_box"
    DEGENERATE_POLYGON = "degenerate_polygon"
    BAD_COORDINATES = "bad_coordinates"
    MISSING_SEGMENTATION = "missing_segmentation"
    EMPTY_MASK = "empty_mask"
    OUTSIDE_IMAGE_DIR = "outside_image_dir"
    BACKGROUND_CATEGORY = "background_category"
    CROWD = "crowd"
    EMPTY_IMAGE = "empty_image"

    @property
    def severity(self) -> str:
        """``"error"`` (training cannot proceed), ``"warning"`` (dropped, or used but worth a
        look) or ``"info"``."""
        if self in _WARNINGS:
            return "warning"
        if self in (Kind.CROWD, Kind.EMPTY_IMAGE, Kind.BACKGROUND_CATEGORY):
            return "info"
        return "error"


_WARNINGS = (
    Kind.DEGENERATE_BOX,
    Kind.DEGENERATE_POLYGON,
    Kind.BAD_COORDINATES,
    Kind.MISSING_SEGMENTATION,
    Kind.EMPTY_MASK,
    Kind.OUTSIDE_IMAGE_DIR,
)


@dataclass(frozen=True)
class Problem:
    """One finding: its kind, what it is about (``"annotation 17"``), and details."""

    kind: Kind
    subject: str
    detail: str = ""

    @property
    def severity(self) -> str:
        return self.kind.severity


@dataclass
class ScanResult:
    """Structurally valid entries of an annotation file, and what was wrong with the rest."""

    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def read_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Parses a COCO annotation file; a missing, unparsable or ill-shaped file raises.

    Missing ``annotations`` or ``categories`` lists are treated as empty (test-set files have
    no annotations).

    Raises:
        DatasetError: naming the file and what is wrong with it.
    """
    path = Path(ann_file)
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not a valid JSON file: {err}") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top, got {type(data).__name__}")
    if "images" not in data:
        raise DatasetError(f"{path}: no 'images' list; is this a COCO annotation file?")
    for key in ("images", "annotations", "categories"):
        data.setdefault(key, [])
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data


def scan(data: dict[str, Any], known_category_ids: Container[object]) -> ScanResult:
    """Checks ids, required fields and references without looking at pixels.

    Finds images without ``id``/``file_name``/``width``/``height``, duplicate ids, annotations
    with missing fields, malformed ``bbox``/``segmentation``, or an ``image_id`` or
    ``category_id`` that does not exist. Entries with such problems are left out of the result.
    """
    result = ScanResult()
    image_ids: Counter[Any] = Counter(
        img["id"] for img in data["images"] if _is_dict(img) and _is_id(img.get("id"))
    )
    for i, img in enumerate(data["images"]):
        subject = f"images[{i}]"
        if not _is_dict(img):
            result.problems.append(Problem(Kind.MISSING_FIELD, subject, "not an object"))
            continue
        missing = [k for k in ("id", "file_name", "width", "height") if k not in img]
        if missing:
            result.problems.append(Problem(Kind.MISSING_FIELD, subject, f"no {missing}"))
            continue
        if not (_is_id(img["id"]) and isinstance(img["file_name"], str)):
            detail = "id must be an integer (or string) and file_name a string"
            result.problems.append(Problem(Kind.MISSING_FIELD, subject, detail))
            continue
        subject = f"image {img['id']} ({img['file_name']})"
        if image_ids[img["id"]] > 1:
            result.problems.append(Problem(Kind.DUPLICATE_ID, subject, "image id used twice"))
            continue
        if not all(_is_int(img[k]) and img[k] > 0 for k in ("width", "height")):
            detail = f"width/height must be positive integers, got {img['width']}x{img['height']}"
            result.problems.append(Problem(Kind.MISSING_FIELD, subject, detail))
            continue
        result.images.append(img)
    good_images = {img["id"] for img in result.images}
    ann_ids: Counter[Any] = Counter(
        a["id"] for a in data["annotations"] if _is_dict(a) and _is_id(a.get("id"))
    )
    for i, ann in enumerate(data["annotations"]):
        problem = _annotation_problem(i, ann, ann_ids, image_ids, good_images, known_category_ids)
        if problem is None:
            result.annotations.append(ann)
        elif problem is not _SKIP:
            result.problems.append(problem)
    return result


_SKIP = Problem(Kind.UNKNOWN_IMAGE, "")  # an annotation of an image that is itself invalid


def _annotation_problem(
    i: int,
    ann: Any,
    ann_ids: Counter[Any],
    image_ids: Counter[Any],
    good_images: set[Any],
    known_category_ids: Container[object],
) -> Problem | None:
    if not _is_dict(ann):
        return Problem(Kind.MISSING_FIELD, f"annotations[{i}]", "not an object")
    missing = [k for k in ("id", "image_id", "category_id", "bbox") if k not in ann]
    if missing:
        return Problem(Kind.MISSING_FIELD, f"annotations[{i}]", f"no {missing}")
    if not (_is_id(ann["id"]) and _is_id(ann["image_id"]) and _is_int(ann["category_id"])):
        detail = "id and image_id must be integers (or strings), category_id an integer"
        return Problem(Kind.MISSING_FIELD, f"annotations[{i}]", detail)
    subject = f"annotation {ann['id']}"
    if ann_ids[ann["id"]] > 1:
        return Problem(Kind.DUPLICATE_ID, subject, "annotation id used twice")
    if ann["image_id"] not in image_ids:
        return Problem(Kind.UNKNOWN_IMAGE, subject, f"image_id {ann['image_id']} does not exist")
    if ann["image_id"] not in good_images:
        return _SKIP
    if ann["category_id"] not in known_category_ids:
        return Problem(Kind.UNKNOWN_CATEGORY, subject, f"category_id {ann['category_id']}")
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return Problem(Kind.MISSING_FIELD, subject, f"bbox must be 4 numbers, got {bbox!r:.60}")
    segm = ann.get("segmentation")
    if segm is not None and not _segmentation_well_formed(segm):
        return Problem(Kind.BAD_SEGMENTATION, subject, "segmentation is neither polygons nor RLE")
    return None


def outside_image_dir(file_name: str) -> bool:
    """True if ``file_name`` is absolute or climbs out of the image folder with ``..``.

    Judged on the text alone (symbolic links inside the folder are the user's business).
    """
    if os.path.isabs(file_name) or file_name.startswith(("/", "\\")):
        return True
    parts = os.path.normpath(file_name.replace("\\", "/")).split(os.sep)
    return bool(parts) and parts[0] == ".."


def classify(ann: dict[str, Any], height: int, width: int) -> Problem | None:
    """Why a structurally valid annotation cannot be a training target, or None if it can.

    Returns a :class:`Problem` of kind ``CROWD`` (``iscrowd=1``), ``BAD_SEGMENTATION`` (an RLE
    whose size is not the image's, or whose ``counts`` are corrupt or do not cover the image
    exactly: an error), ``DEGENERATE_BOX`` (no area once clipped to the image),
    ``MISSING_SEGMENTATION``, ``BAD_COORDINATES`` (a polygon coordinate that is not finite or
    lies far outside the image, see :func:`polygon_coordinates_ok`) or ``DEGENERATE_POLYGON``
    (no part with 3 points). Nothing is rasterised: this is cheap and bounded in memory.
    """
    subject = f"annotation {ann['id']}"
    if ann.get("iscrowd", 0):
        return Problem(Kind.CROWD, subject)
    segm = ann.get("segmentation")
    if isinstance(segm, dict):
        detail = rle_problem(segm, height, width)
        if detail is not None:
            return Problem(Kind.BAD_SEGMENTATION, subject, detail)
    x0, y0, x1, y1 = bbox_xyxy(ann["bbox"], height, width)
    if not (x1 > x0 and y1 > y0):
        return Problem(Kind.DEGENERATE_BOX, subject, f"bbox {ann['bbox']} has no area in image")
    if segm is None or (isinstance(segm, list) and not segm):
        return Problem(Kind.MISSING_SEGMENTATION, subject)
    if isinstance(segm, list):
        parts = clean_polygons(segm)
        bad = [p for p in parts if not polygon_coordinates_ok(p, height, width)]
        if bad:
            detail = f"polygon coordinates not finite or far outside the {width}x{height} image"
            return Problem(Kind.BAD_COORDINATES, subject, f"{detail}: {bad[0]!r:.60}")
        if not parts:
            return Problem(Kind.DEGENERATE_POLYGON, subject, "no polygon with 3 or more points")
    return None


def polygon_coordinates_ok(polygon: list[float], height: int, width: int) -> bool:
    """True if every coordinate is finite and within one image size of the image.

    x must lie in ``[-s, width + s]`` and y in ``[-s, height + s]`` with ``s = max(h, w)``:
    generous for annotations that leave the frame, and a bound on what rasterising costs
    (pycocotools' memory grows with the polygon's extent, 1e9 would need gigabytes).
    """
    margin = float(max(height, width))
    xs, ys = polygon[0::2], polygon[1::2]
    return all(
        math.isfinite(v) and -margin <= v <= limit + margin
        for values, limit in ((xs, width), (ys, height))
        for v in values
    )


def rle_problem(segm: dict[str, Any], height: int, width: int) -> str | None:
    """What is wrong with a well-formed RLE for an image of this size, or None.

    Checks ``size`` against the image and decodes ``counts`` (a list of run lengths, or
    pycocotools' compressed string) without rasterising: every run must be non-negative and
    the runs must cover exactly ``height * width`` pixels (pycocotools does not check this).
    """
    size = [int(v) for v in segm["size"]]
    if size != [height, width]:
        return f"RLE size {size} but image is [{height}, {width}] (h, w)"
    counts = segm["counts"]
    total = height * width
    if isinstance(counts, list):
        if sum(counts) != total:
            return f"uncompressed RLE counts sum to {sum(counts)}, not h*w = {total}"
        return None
    try:
        text = counts.decode("ascii") if isinstance(counts, bytes) else counts
        runs = decode_rle_string(text, limit=total)
    except (ValueError, UnicodeDecodeError) as err:
        return f"corrupt compressed RLE counts: {err}"
    if sum(runs) != total:
        return f"compressed RLE runs cover {sum(runs)} pixels, not h*w = {total}"
    return None


def decode_rle_string(counts: str, *, limit: int) -> list[int]:
    """pycocotools' compressed RLE string -> run lengths (a port of ``rleFrString``).

    Args:
        counts: the string (characters ``'0'`` to ``'o'``, 5 bits per character).
        limit: the number of pixels; decoding stops with an error once the runs exceed it.

    Raises:
        ValueError: a character out of range, a number cut off at the end, a negative run, or
            runs covering more than ``limit`` pixels.
    """
    runs: list[int] = []
    total, p, n = 0, 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("the string ends inside a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64 or k > 7:
                raise ValueError(f"invalid character {counts[p]!r} at {p}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x -= 1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise ValueError(f"negative run {x} at run {len(runs)}")
        runs.append(x)
        total += x
        if total > limit:
            raise ValueError(
                f"runs overflow the image ({total} pixels > {limit} at run {len(runs)})"
            )
    return runs


def bbox_xyxy(bbox: list[float], height: int, width: int) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` -> ``(x0, y0, x1, y1)`` clipped to the image.

    A negative width or height yields a box with ``x1 <= x0`` (or ``y1 <= y0``): degenerate.
    """
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return (0.0, 0.0, 0.0, 0.0)
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if w <= 0 or h <= 0:
        return (x0, y0, x0, y0)
    return (x0, y0, x1, y1)


def clean_polygons(segm: list[list[float]]) -> list[list[float]]:
    """The polygon parts with at least 3 points (6 coordinates, an even count).

    pycocotools reads a 4-number "polygon" as a box, so short parts must go before decoding.
    Coordinates are not checked here (:func:`polygon_coordinates_ok` does).
    """
    return [p for p in segm if len(p) >= 6 and len(p) % 2 == 0]


def decode_mask(segm: list[list[float]] | dict[str, Any], height: int, width: int) -> np.ndarray:
    """Rasterises a COCO segmentation with pycocotools.

    Args:
        segm: polygons (a list of flat ``[x0, y0, x1, y1, ...]`` lists), uncompressed RLE
            (``counts`` a list of ints) or compressed RLE (``counts`` a string or bytes).
        height, width: image size.

    Returns:
        [height, width] bool mask, as ``COCO.annToMask`` (polygon parts are merged).

    Raises:
        ValueError: polygon coordinates that are not finite or far outside the image, or an
            RLE that is corrupt or not of this size (checked before pycocotools sees them, so
            memory stays bounded by the image size).
    """
    if isinstance(segm, list):
        parts = clean_polygons(segm)
        if not all(polygon_coordinates_ok(p, height, width) for p in parts):
            raise ValueError(f"polygon coordinates not finite or far outside {width}x{height}")
        rle = mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
    else:
        problem = rle_problem(segm, height, width)
        if problem is not None:
            raise ValueError(problem)
        if isinstance(segm["counts"], list):
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            rle = {"size": list(segm["size"]), "counts": segm["counts"]}
    with warnings.catch_warnings():
        # pycocotools' Cython decoder trips a NumPy 2 deprecation about ``__array__(copy=)``
        warnings.filterwarnings(
            "ignore", message="__array__ implementation", category=DeprecationWarning
        )
        return mask_utils.decode(rle).astype(bool)


def encode_binary_mask(mask: np.ndarray) -> dict[str, Any]:
    """[H, W] boolean mask -> COCO compressed RLE (``size`` [H, W], ``counts`` str, as in JSON).

    :func:`decode_mask` is its inverse.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a 2-D [H, W] array, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _segmentation_well_formed(segm: Any) -> bool:
    if isinstance(segm, list):
        return all(isinstance(p, list) and all(_is_number(v) for v in p) for p in segm)
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        size_ok = isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)
        if isinstance(counts, list):
            return size_ok and all(_is_int(v) and v >= 0 for v in counts)
        return size_ok and isinstance(counts, (str, bytes))
    return False


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return _is_int(value) or isinstance(value, str)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
