"""COCOeval back ends: faster-coco-eval gives pycocotools' numbers on the same detections.

The ground truth has several images and categories, polygon and RLE masks, crowd regions, an
image with no object and objects of every COCO size range; the detections are near misses,
wrong classes, duplicates, false positives, tied scores, and an image with none. Every summary
number must print the same at pycocotools' precision (``%0.3f``) and agree as a float to 1e-12.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskrcnn.evaluation.coco_eval import (
    KEYPOINT_STAT_NAMES,
    STAT_NAMES,
    EvalResult,
    ShardResult,
    check_coco_backend,
    default_coco_backend,
    run_cocoeval,
)
from maskrcnn.evaluation.results import load_coco

pytest.importorskip("faster_coco_eval")

CATEGORY_IDS = (1, 3, 7, 11)
# (height, width) per image; image 4 has no object, image 5 gets no detection.
IMAGE_SIZES = [(160, 200), (200, 160), (180, 240), (120, 120), (150, 210), (240, 180)]
TOLERANCE = 1e-12


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _ellipse(h: int, w: int, box: tuple[float, float, float, float]) -> np.ndarray:
    x, y, bw, bh = box
    ys, xs = np.mgrid[0:h, 0:w]
    cx, cy = x + bw / 2, y + bh / 2
    return ((xs + 0.5 - cx) / (bw / 2)) ** 2 + ((ys + 0.5 - cy) / (bh / 2)) ** 2 <= 1


def _write_dataset(root: Path, seed: int = 0) -> tuple[Path, list[dict]]:
    """A COCO file with varied ground truth, and result records (boxes and masks) for it."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id, (h, w) in enumerate(IMAGE_SIZES, start=1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        count = 0 if image_id == 4 else int(rng.integers(3, 9))
        for k in range(count):
            side = float(rng.choice([12.0, 24.0, 50.0, 110.0])) * rng.uniform(0.8, 1.2)
            bw, bh = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            bw, bh = min(bw, w - 2.0), min(bh, h - 2.0)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            mask = _ellipse(h, w, (x, y, bw, bh))
            crowd = k == 0 and image_id in (2, 5)
            polygon = not crowd and rng.random() < 0.5
            if polygon:
                t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
                px, py = x + bw / 2 + bw / 2 * np.cos(t), y + bh / 2 + bh / 2 * np.sin(t)
                segmentation: list | dict = [[float(v) for v in np.stack([px, py], 1).ravel()]]
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
            else:
                segmentation = _rle(mask)
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            category = int(rng.choice(CATEGORY_IDS))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": segmentation,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": int(crowd),
                }
            )
            if image_id == 5 or rng.random() < 0.15:
                continue  # missed
            for _ in range(int(rng.integers(1, 3))):  # near misses and duplicates
                dx, dy = rng.normal(0, 0.08 * side, 2)
                scale = np.exp(rng.normal(0, 0.1, 2))
                box = (x + dx, y + dy, bw * scale[0], bh * scale[1])
                label = category if rng.random() < 0.85 else int(rng.choice(CATEGORY_IDS))
                detections.append(_detection(image_id, label, box, h, w, rng))
        if image_id == 5:
            continue
        for _ in range(int(rng.integers(2, 12))):  # false positives, lower scores
            bw, bh = rng.uniform(6, w / 2), rng.uniform(6, h / 2)
            box = (rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh)
            detections.append(
                _detection(image_id, int(rng.choice(CATEGORY_IDS)), box, h, w, rng, 0.6)
            )
    for d in detections[::7]:  # some tied scores
        d["score"] = 0.5
    categories = [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]
    ann = root / "gt.json"
    data = {"images": images, "annotations": annotations, "categories": categories}
    ann.write_text(json.dumps(data))
    return ann, detections


def _detection(image_id, category, box, h, w, rng, top: float = 1.0) -> dict:
    x, y, bw, bh = box
    return {
        "image_id": image_id,
        "category_id": category,
        "bbox": [float(x), float(y), float(bw), float(bh)],
        "score": float(rng.uniform(0.05, top)),
        "segmentation": _rle(_ellipse(h, w, box)),
    }


def _both(ann: Path, detections: list[dict]) -> tuple[EvalResult, EvalResult]:
    image_ids = sorted(load_coco(ann).getImgIds())
    results = []
    for backend in ("pycocotools", "faster"):
        coco = load_coco(ann)  # each back end its own ground truth (COCOeval adds keys)
        merged = ShardResult(image_ids, json.loads(json.dumps(detections)))
        results.append(run_cocoeval(coco, merged, coco_backend=backend))
    return results[0], results[1]


def _assert_same(reference: tuple[float, ...], faster: tuple[float, ...], where: str) -> None:
    printed = ([f"{v:0.3f}" for v in reference], [f"{v:0.3f}" for v in faster])
    assert printed[0] == printed[1], f"{where}: printed numbers differ"
    worst = float(np.max(np.abs(np.subtract(reference, faster))))
    assert worst <= TOLERANCE, f"{where}: floats differ by {worst:.3g}"


def test_faster_backend_gives_pycocotools_numbers(tmp_path):
    ann, detections = _write_dataset(tmp_path)
    gt = COCO(str(ann))
    assert sum(a["iscrowd"] for a in gt.dataset["annotations"]) == 2
    assert not gt.getAnnIds(imgIds=[4]) and not [d for d in detections if d["image_id"] == 5]
    reference, faster = _both(ann, detections)
    for task in ("bbox", "segm"):
        ref, fast = getattr(reference, task), getattr(faster, task)
        assert ref.names == fast.names == STAT_NAMES
        _assert_same(ref.values, fast.values, task)
        # Numbers that could differ: neither trivial nor missing.
        assert 0.05 < ref.ap < 0.95 and 0 < ref["APs"] < 1 and 0 < ref["APl"] < 1, ref
    assert reference.timing is not None and faster.timing is not None
    assert reference.timing.backend == "pycocotools" and faster.timing.backend == "faster"
    assert set(faster.timing.cocoeval_seconds) == {"ground_truth", "bbox", "segm"}


@pytest.mark.parametrize("seed", [1, 2])
def test_backends_agree_on_other_draws(tmp_path, seed):
    ann, detections = _write_dataset(tmp_path, seed)
    reference, faster = _both(ann, detections)
    for task in ("bbox", "segm"):
        _assert_same(getattr(reference, task).values, getattr(faster, task).values, task)


def test_backends_agree_on_keypoints(tmp_path):
    from maskrcnn.data.figures import write_figures_dataset

    files = write_figures_dataset(tmp_path, train=0, val=4, seed=3, image_size=(96, 128))
    rng = np.random.default_rng(0)
    detections = []
    for ann in load_coco(files.val_ann).dataset["annotations"]:
        kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        kps[:, :2] += rng.normal(0, 2.0, (len(kps), 2))
        kps[:, 2] = 1
        detections.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": ann["bbox"],
                "score": float(rng.uniform(0.1, 1.0)),
                "keypoints": [float(v) for v in kps.ravel()],
            }
        )
    reference, faster = _both(files.val_ann, detections)
    assert reference.keypoints is not None and faster.keypoints is not None
    assert faster.keypoints.names == KEYPOINT_STAT_NAMES
    _assert_same(reference.keypoints.values, faster.keypoints.values, "keypoints")
    assert 0.05 < reference.keypoints.ap < 0.95
    _assert_same(reference.bbox.values, faster.bbox.values, "bbox")


def test_backend_choice():
    assert default_coco_backend() == "faster"
    assert check_coco_backend(None) == "faster"
    assert check_coco_backend("pycocotools") == "pycocotools"
    with pytest.raises(ValueError, match="expected one of"):
        check_coco_backend("lvis")
