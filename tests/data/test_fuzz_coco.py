"""A seeded mutation fuzzer over a small valid COCO file (issue 16).

Each case changes one field of the file (a wrong type, an out-of-range or non-finite number,
a missing key, a duplicated entry, corrupt RLE) and checks the guarantee: ``data check``
returns a report (never raises), and :class:`CocoDataset` either refuses the file with a
:class:`DatasetError` or serves every image, raising nothing but a ``DatasetError`` naming the
problem. When ``data check`` finds no error, the dataset must build and serve every image.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maskrcnn.data.annotations import DatasetError, encode_binary_mask
from maskrcnn.data.check import check_dataset
from maskrcnn.data.coco import CocoDataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CASES = 400
SEED = 16

_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1,
    7,
    2**40,
    1e9,
    -1e9,
    float("nan"),
    float("inf"),
    0.5,
    "",
    "x",
    "../x.png",
    "/etc/passwd",
    [],
    {},
    [1, 2],
    [0, 0, 1e9, 0, 1e9, 1e9],
    [[1, 1, 5, 1, 5, float("nan")]],
    {"size": [20, 30], "counts": "garbage!"},
    {"size": [20, 30], "counts": [600, 100]},
    {"size": [1e9, 30], "counts": "0"},
    {"size": [20, 30], "counts": 5},
]


_SKIP_COUNTERS = (
    "crowd",
    "degenerate_boxes",
    "degenerate_polygons",
    "bad_coordinates",
    "missing_segmentations",
    "empty_masks",
)


def _base() -> dict[str, Any]:
    mask = np.zeros((20, 30), dtype=bool)
    mask[4:12, 5:20] = True
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 20, "width": 30},
            {"id": 2, "file_name": "b.png", "height": 20, "width": 30},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [2, 2, 10, 10],
                "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]],
                "area": 100,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 2,
                "category_id": 2,
                "bbox": [5, 4, 15, 8],
                "segmentation": encode_binary_mask(mask),
                "area": 120,
                "iscrowd": 0,
            },
        ],
        "categories": [
            {"id": 0, "name": "_background_"},
            {"id": 1, "name": "a"},
            {"id": 2, "name": "b"},
        ],
    }


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a JSON value (the root excluded)."""
    found = []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for key, child in items:
        found.append((*prefix, key))
        found += _paths(child, (*prefix, key))
    return found


def _mutate(data: dict[str, Any], rng: np.random.Generator) -> str:
    paths = _paths(data)
    path = paths[rng.integers(len(paths))]
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    action = rng.integers(4)
    if action == 0 and isinstance(parent, dict):
        del parent[key]
        return f"delete {path}"
    if action == 1 and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
        return f"duplicate {path}"
    value = copy.deepcopy(_VALUES[rng.integers(len(_VALUES))])
    parent[key] = value
    return f"set {path} = {value!r:.40}"


def _use(ds: CocoDataset) -> None:
    for i in range(len(ds)):
        sample = ds[i]
        assert sample.image.shape[-2:] == sample.gt.masks.shape[-2:]


def test_mutated_coco_files_give_a_clear_error_or_a_clean_pass(tmp_path: Path) -> None:
    from PIL import Image

    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(SEED)
    for name in ("a.png", "b.png"):
        pixels = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / name)
    ann_file = tmp_path / "ann.json"
    outcomes: Counter[str] = Counter()
    for case in range(CASES):
        data = _base()
        changes = [_mutate(data, rng) for _ in range(1 + rng.integers(2))]
        ann_file.write_text(json.dumps(data))
        where = f"case {case}: {changes}"
        report = check_dataset(ann_file, image_dir)  # must not raise
        try:
            ds = CocoDataset(ann_file, image_dir)
            _use(ds)
        except DatasetError as err:
            assert not str(err).startswith("Traceback") and str(err), where
            assert report.has_errors, f"{where}: data check passed, training failed: {err}"
            outcomes["error"] += 1
            continue
        dropped = ds.stats.as_dict()
        skipped = sum(dropped[k] for k in _SKIP_COUNTERS)
        outcomes["pass, with skips" if skipped else "pass"] += 1
    print(f"fuzzer: {CASES} cases, {dict(outcomes)}")
    assert sum(outcomes.values()) == CASES
    assert min(outcomes.values()) > CASES // 50 and len(outcomes) == 3  # each outcome exercised
