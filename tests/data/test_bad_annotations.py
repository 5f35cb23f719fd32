"""Annotations that once crashed training or exhausted memory: rows 1-2 of issue 16."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maskrcnn.data.annotations import (
    Kind,
    decode_mask,
    decode_rle_string,
    encode_binary_mask,
    rle_problem,
)
from maskrcnn.data.check import check_dataset
from maskrcnn.data.coco import CocoDataset, DatasetError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def image_entry(image_id: int, height: int = 20, width: int = 30) -> dict[str, Any]:
    return {"id": image_id, "file_name": f"img{image_id}.png", "height": height, "width": width}


def ann(ann_id: int, segmentation: Any, bbox: list[float] | None = None) -> dict[str, Any]:
    return {
        "id": ann_id,
        "image_id": 1,
        "category_id": 7,
        "bbox": bbox or [2, 2, 10, 10],
        "segmentation": segmentation,
        "iscrowd": 0,
    }


GOOD = [[2, 2, 12, 2, 12, 12, 2, 12]]
HUGE = [[2, 2, 1e9, 2, 1e9, 1e9, 2, 12]]
NAN = [[2, 2, float("nan"), 2, 12, 12, 2, 12]]


_MEMORY_BOUND_SCRIPT = """
import resource, sys
from maskrcnn.data.check import check_dataset
from maskrcnn.data.coco import CocoDataset
# after the imports (torch maps a lot of address space): 1 GiB more than is mapped now
mapped_kib = next(
    int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")
)
limit = mapped_kib * 1024 + 1024**3
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
report = check_dataset(sys.argv[1], sys.argv[2])
assert [p.kind.value for p in report.issues if p.severity != "info"] == ["bad_coordinates"] * 2
ds = CocoDataset(sys.argv[1], sys.argv[2])
assert ds.stats.bad_coordinates == 2 and len(ds.targets(0)) == 1
print("ok")
"""


def test_huge_and_nan_polygons_stay_within_a_memory_bound(make_coco, tmp_path: Path):
    ann_file, image_dir = make_coco([image_entry(1)], [ann(1, GOOD), ann(2, HUGE), ann(3, NAN)])
    script = tmp_path / "bounded.py"
    script.write_text(_MEMORY_BOUND_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(script), str(ann_file), str(image_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_huge_and_nan_polygons_reported_with_annotation_and_file(make_coco, caplog):
    ann_file, image_dir = make_coco([image_entry(1)], [ann(1, GOOD), ann(2, HUGE), ann(3, NAN)])
    report = check_dataset(ann_file, image_dir)
    found = report.of_kind(Kind.BAD_COORDINATES)
    assert [p.subject for p in found] == [
        "annotation 2 of image 1 (img1.png)",
        "annotation 3 of image 1 (img1.png)",
    ]
    assert not report.has_errors  # dropped (a warning), like degenerate polygons
    with caplog.at_level("WARNING"):
        ds = CocoDataset(ann_file, image_dir)
    assert ds.stats.bad_coordinates == 2 and ds.stats.targets == 1
    assert "annotation 2 (image img1.png)" in caplog.text
    assert "annotation 3 (image img1.png)" in caplog.text
    with pytest.raises(ValueError, match="not finite or far outside"):
        decode_mask(HUGE, 20, 30)


def test_polygons_slightly_outside_the_image_are_kept(make_coco):
    outside = [[-10, -5, 40, -5, 40, 25, -10, 25]]  # covers the whole 30x20 image
    ann_file, image_dir = make_coco([image_entry(1)], [ann(1, outside, [0, 0, 30, 20])])
    gt = CocoDataset(ann_file, image_dir).targets(0)
    assert len(gt) == 1 and bool(gt.masks.all())


def _runs_to_mask(runs: list[int], height: int, width: int) -> np.ndarray:
    flat = np.concatenate([np.full(r, i % 2, dtype=bool) for i, r in enumerate(runs)])
    return flat.reshape(width, height).T


def test_compressed_rle_decoding_matches_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(100):
        mask = rng.random((17, 23)) < rng.random()
        rle = encode_binary_mask(mask)
        runs = decode_rle_string(rle["counts"], limit=17 * 23)
        assert np.array_equal(_runs_to_mask(runs, 17, 23), mask)
        assert rle_problem(rle, 17, 23) is None


@pytest.mark.parametrize(
    "counts",
    [
        "garbage counts!",  # characters outside pycocotools' alphabet
        "0Z1000",  # runs short of the image
        "0g",  # a number cut off at the end
        "Ro00000",  # a first run larger than the image
        [100, 600],  # uncompressed, overflowing
    ],
)
def test_corrupt_rle_is_an_error_in_check_and_in_training(make_coco, counts):
    rle = {"size": [20, 30], "counts": counts}
    ann_file, image_dir = make_coco([image_entry(1)], [ann(1, GOOD), ann(2, rle)])
    report = check_dataset(ann_file, image_dir)
    assert report.has_errors
    (found,) = report.of_kind(Kind.BAD_SEGMENTATION)
    assert found.subject == "annotation 2 of image 1 (img1.png)"
    assert report.count(Kind.EMPTY_MASK) == 0
    with pytest.raises(DatasetError, match="annotation 2") as err:
        CocoDataset(ann_file, image_dir)
    assert "pycocotools" not in str(err.value)
    with pytest.raises(ValueError, match="RLE"):
        decode_mask(rle, 20, 30)


def test_valid_rle_in_bytes_still_decodes(make_coco):
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:9, 4:20] = True
    rle = encode_binary_mask(mask)
    assert rle_problem({"size": [20, 30], "counts": rle["counts"].encode()}, 20, 30) is None
    ann_file, image_dir = make_coco([image_entry(1)], [ann(1, rle)])
    assert json.loads(ann_file.read_text())["annotations"][0]["segmentation"] == rle
    assert np.array_equal(CocoDataset(ann_file, image_dir).targets(0).masks[0].numpy(), mask)


def test_file_names_outside_the_image_folder_are_warned(make_coco, tmp_path: Path, caplog):
    from PIL import Image

    ann_file, image_dir = make_coco([image_entry(1)], [ann(1, GOOD)])
    Image.new("RGB", (30, 20)).save(tmp_path / "outside.png")
    Image.new("RGB", (30, 20)).save(tmp_path / "absolute.png")
    (image_dir / "sub").mkdir()
    data = json.loads(ann_file.read_text())
    data["images"] += [
        {**image_entry(2), "file_name": "../outside.png"},
        {**image_entry(3), "file_name": str(tmp_path / "absolute.png")},
        {**image_entry(4), "file_name": "sub/../img1.png"},  # stays inside: fine
    ]
    ann_file.write_text(json.dumps(data))
    report = check_dataset(ann_file, image_dir)
    assert [p.subject for p in report.of_kind(Kind.OUTSIDE_IMAGE_DIR)] == [
        "image 2 (../outside.png)",
        f"image 3 ({tmp_path / 'absolute.png'})",
    ]
    assert not report.has_errors and Kind.OUTSIDE_IMAGE_DIR.severity == "warning"
    with caplog.at_level("WARNING"):
        ds = CocoDataset(ann_file, image_dir)
    assert ds.stats.outside_image_dir == 2
    assert "2 image file(s) outside the image folder" in caplog.text
    assert "../outside.png" in caplog.text and "sub/../img1.png" not in caplog.text


def test_labelme_background_category_is_not_a_trained_class(make_coco, caplog):
    # as labelme's labelme2coco writes it: id 0 "_background_" first, never used
    categories = [
        {"supercategory": None, "id": 0, "name": "_background_"},
        {"supercategory": None, "id": 1, "name": "cell"},
        {"supercategory": None, "id": 2, "name": "Background"},  # used below: a real class
    ]
    anns = [{**ann(1, GOOD), "category_id": 1}, {**ann(2, GOOD), "category_id": 2}]
    ann_file, image_dir = make_coco([image_entry(1)], anns, categories)
    report = check_dataset(ann_file, image_dir)
    (found,) = report.of_kind(Kind.BACKGROUND_CATEGORY)
    assert found.subject == "category 0" and "left out of the trained classes" in found.detail
    assert not report.has_errors
    with caplog.at_level("WARNING"):
        ds = CocoDataset(ann_file, image_dir)
    assert ds.categories.category_ids == (1, 2)
    assert ds.categories.names_by_label == ("__background__", "cell", "Background")
    assert "0 '_background_'" in caplog.text
    assert ds.targets(0).labels.tolist() == [1, 2]
    validation = CocoDataset(ann_file, image_dir, categories=ds.categories)
    assert validation.categories == ds.categories
