"""Checking a COCO dataset before training on it: ``maskrcnn data check``.

:func:`check_dataset` reports everything :class:`~maskrcnn.data.coco.CocoDataset` would refuse
(errors) or silently leave out (warnings), plus facts worth knowing (crowd regions, images
without objects). :func:`format_report` renders the report as a table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from maskrcnn.data.annotations import (
    DatasetError,
    Kind,
    Problem,
    classify,
    decode_mask,
    outside_image_dir,
    read_coco_json,
    scan,
)
from maskrcnn.data.categories import CategoryMap, placeholder_backgrounds
from maskrcnn.data.io import DECODE_ERRORS, exif_orientation
from maskrcnn.data.keypoints import KeypointSpec, keypoints_problem

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass
class CheckReport:
    """Findings of :func:`check_dataset`.

    Attributes:
        ann_file, image_dir: what was checked.
        num_images, num_annotations, num_categories: entries in the annotation file.
        issues: every finding, in file order within each kind.
    """

    ann_file: Path
    image_dir: Path
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    issues: list[Problem] = field(default_factory=list)

    @property
    def has_errors(self) -> bool:
        """True if training on this dataset would fail (``CocoDataset`` would raise)."""
        return any(p.severity == "error" for p in self.issues)

    def count(self, kind: Kind) -> int:
        """Number of findings of one kind."""
        return sum(p.kind is kind for p in self.issues)

    def of_kind(self, kind: Kind) -> list[Problem]:
        """The findings of one kind."""
        return [p for p in self.issues if p.kind is kind]


def check_dataset(
    ann_file: str | Path, image_dir: str | Path, *, decode: bool = True
) -> CheckReport:
    """Checks a COCO annotation file and its images.

    Finds malformed entries, duplicate ids, references to unknown images or categories,
    missing image files, unreadable images, size mismatches between the file's
    ``width``/``height`` and the image (EXIF orientation applied), RLE of the wrong size,
    degenerate boxes and polygons, annotations without segmentation, crowd regions and
    images without any usable annotation.

    Args:
        ann_file: COCO instances JSON.
        image_dir: folder that ``file_name`` entries are relative to.
        decode: decode every image and mask (finds corrupt files and empty masks); False reads
            image headers only.
    """
    report = CheckReport(ann_file=Path(ann_file), image_dir=Path(image_dir))
    try:
        data = read_coco_json(ann_file)
    except DatasetError as err:
        report.issues.append(Problem(Kind.INVALID_FILE, str(ann_file), str(err)))
        return report
    report.num_images = len(data["images"])
    report.num_annotations = len(data["annotations"])
    report.num_categories = len(data["categories"])
    category_ids = Counter(
        c.get("id")
        for c in data["categories"]
        if isinstance(c, dict) and isinstance(c.get("id"), (int, str))
    )
    for cid, n in category_ids.items():
        if n > 1:
            report.issues.append(Problem(Kind.DUPLICATE_ID, f"category {cid}", f"used {n} times"))
    placeholders = placeholder_backgrounds(data["categories"], data["annotations"])
    for cat in placeholders:
        detail = f"{cat.get('name')!r} has no annotations: left out of the trained classes"
        report.issues.append(Problem(Kind.BACKGROUND_CATEGORY, f"category {cat.get('id')}", detail))
    if not any(n > 1 for n in category_ids.values()):  # as CocoDataset builds its label map
        kept = [c for c in data["categories"] if not any(c is p for p in placeholders)]
        try:
            CategoryMap.from_coco(kept, source="categories")
        except ValueError as err:
            report.issues.append(Problem(Kind.MISSING_FIELD, "categories", str(err)))
    keypoints = None
    try:
        keypoints = KeypointSpec.from_coco(data["categories"], source="categories")
    except DatasetError as err:
        report.issues.append(Problem(Kind.BAD_KEYPOINTS, "categories", str(err)))
    scanned = scan(data, set(category_ids))
    report.issues.extend(scanned.problems)
    images = {img["id"]: img for img in scanned.images}
    usable = Counter[int]()
    annotated = Counter(ann["image_id"] for ann in scanned.annotations)
    for ann in scanned.annotations:
        img = images[ann["image_id"]]
        problem = classify(ann, img["height"], img["width"])
        if problem is None and keypoints is not None:
            bad_keypoints = keypoints_problem(ann, keypoints.num_keypoints)
            if bad_keypoints is not None:
                problem = Problem(Kind.BAD_KEYPOINTS, f"annotation {ann['id']}", bad_keypoints)
        if problem is None and decode and not _mask_has_pixels(ann, img):
            problem = Problem(Kind.EMPTY_MASK, f"annotation {ann['id']}", "mask has no pixel")
        if problem is None:
            usable[ann["image_id"]] += 1
        else:  # named with its image: "annotation 17 of image 3 (a.png)"
            subject = f"{problem.subject} of {_image_subject(img)}"
            report.issues.append(Problem(problem.kind, subject, problem.detail))
    for image_id, img in images.items():
        report.issues.extend(_check_image_file(img, Path(image_dir), decode))
        if not usable[image_id]:
            n = annotated[image_id]
            detail = f"{n} annotation(s), none usable" if n else "no annotations"
            report.issues.append(Problem(Kind.EMPTY_IMAGE, _image_subject(img), detail))
    return report


def _mask_has_pixels(ann: dict[str, Any], img: dict[str, Any]) -> bool:
    # classify() has vetted coordinates and RLE counts, so decoding is bounded and cannot fail
    return bool(decode_mask(ann["segmentation"], img["height"], img["width"]).any())


def _image_subject(img: dict[str, Any]) -> str:
    return f"image {img['id']} ({img['file_name']})"


def _check_image_file(img: dict[str, Any], image_dir: Path, decode: bool) -> list[Problem]:
    path = image_dir / img["file_name"]
    subject = _image_subject(img)
    found: list[Problem] = []
    if outside_image_dir(img["file_name"]):
        detail = f"file_name points outside {image_dir} (absolute, or '..'); it is read from there"
        found.append(Problem(Kind.OUTSIDE_IMAGE_DIR, subject, detail))
    return found + _check_image_contents(img, path, decode)


def _check_image_contents(img: dict[str, Any], path: Path, decode: bool) -> list[Problem]:
    subject = _image_subject(img)
    if not path.is_file():
        return [Problem(Kind.MISSING_IMAGE, subject, "file not found")]
    try:
        with Image.open(path) as pil:
            raw = (pil.height, pil.width)
            orientation = exif_orientation(pil)
            if decode:
                pil.load()
    except DECODE_ERRORS as err:
        return [Problem(Kind.UNREADABLE_IMAGE, subject, f"{path}: {err}")]
    size = raw[::-1] if orientation in (5, 6, 7, 8) else raw
    expected = (img["height"], img["width"])
    if size == expected:
        return []
    detail = f"file is {size[1]}x{size[0]}, annotation file says {expected[1]}x{expected[0]}"
    if raw == expected:
        detail += " (matches the un-rotated file: annotations ignore its EXIF orientation)"
    return [Problem(Kind.SIZE_MISMATCH, subject, detail)]


def format_report(report: CheckReport, *, examples: int = 3, width: int = 120) -> str:
    """The report as a text table: one row per check with its count, offenders listed below.

    Args:
        report: from :func:`check_dataset`.
        examples: offenders listed per check.
        width: longer example lines are cut.
    """
    lines = [
        f"dataset check: {report.ann_file}  (images in {report.image_dir})",
        f"  {report.num_images} images, {report.num_annotations} annotations, "
        f"{report.num_categories} categories",
        "",
        f"  {'status':<8}  {'check':<20}  {'count':>6}",
        f"  {'-' * 8}  {'-' * 20}  {'-' * 6}",
    ]
    kinds = list(Kind)

    def order(kind: Kind) -> tuple[int, int]:
        found = report.count(kind) > 0
        return (_SEVERITY_ORDER[kind.severity] if found else 3, kinds.index(kind))

    for kind in sorted(kinds, key=order):
        found = report.of_kind(kind)
        status = kind.severity if found else "ok"
        lines.append(f"  {status:<8}  {kind.value:<20}  {len(found):>6}")
        for p in found[:examples]:
            text = f"{p.subject}: {p.detail}" if p.detail else p.subject
            text = text if len(text) <= width - 14 else text[: width - 17] + "..."
            lines.append(f"{'':14}{text}")
        if len(found) > examples:
            lines.append(f"{'':14}... and {len(found) - examples} more")
    errors = sum(p.severity == "error" for p in report.issues)
    warnings = sum(p.severity == "warning" for p in report.issues)
    verdict = "FAILED" if errors else "OK"
    lines += ["", f"{verdict}: {errors} error(s), {warnings} warning(s)"]
    return "\n".join(lines)
