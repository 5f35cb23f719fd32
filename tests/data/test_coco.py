"""CocoDataset: masks, label mapping, filtering, and errors that name their cause."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from maskrcnn.data import coco as coco_module
from maskrcnn.data.annotations import encode_binary_mask
from maskrcnn.data.coco import BadImageError, CategoryMap, CocoDataset, DatasetError


def image_entry(image_id: int, height: int = 20, width: int = 30) -> dict[str, Any]:
    return {"id": image_id, "file_name": f"img{image_id}.png", "height": height, "width": width}


def box_ann(ann_id: int, image_id: int, bbox: list[float], **extra: Any) -> dict[str, Any]:
    """An annotation whose polygon is its box (unless ``segmentation`` is given)."""
    x, y, w, h = bbox
    ann = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 7,
        "bbox": bbox,
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
        "iscrowd": 0,
    }
    ann.update(extra)
    return ann


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_masks_equal_pycocotools_decoding(make_coco, capsys):
    blob = np.zeros((20, 30), dtype=bool)
    blob[3:9, 10:25] = True
    blob[12:15, 2:4] = True
    compressed = encode_binary_mask(blob)  # counts as str, as stored in JSON
    uncompressed = {"size": [20, 30], "counts": [21, 5, 14, 6, 554]}  # column-major runs
    anns = [
        box_ann(1, 1, [1, 1, 8, 8], segmentation=[[1, 1, 9, 2, 4, 9], [12, 12, 20, 12, 16, 18.5]]),
        box_ann(2, 1, [2, 3, 23, 12], category_id=3, segmentation=dict(compressed)),
        box_ann(3, 1, [0, 0, 2, 20], category_id=11, segmentation=uncompressed),
    ]
    ann_file, image_dir = make_coco([image_entry(1)], anns)
    gt = CocoDataset(ann_file, image_dir).targets(0)
    reference = COCO(str(ann_file))
    capsys.readouterr()
    for i, ann_id in enumerate([1, 2, 3]):
        expected = reference.annToMask(reference.anns[ann_id]).astype(bool)
        assert expected.any()
        assert torch.equal(gt.masks[i], torch.from_numpy(expected))
    assert gt.masks.dtype == torch.bool and gt.masks.shape == (3, 20, 30)
    assert gt.labels.tolist() == [2, 1, 3]  # cat (7) -> 2, dog (3) -> 1, fox (11) -> 3
    assert gt.category_names == ["cat", "dog", "fox"]
    assert gt.boxes.dtype == torch.float32
    assert gt.boxes[1].tolist() == [2, 3, 25, 15]  # [x, y, w, h] -> xyxy


def test_boxes_are_clipped_to_the_image(make_coco):
    ann_file, image_dir = make_coco([image_entry(1)], [box_ann(1, 1, [-4, 15, 20, 10])])
    gt = CocoDataset(ann_file, image_dir).targets(0)
    assert gt.boxes.tolist() == [[0, 15, 16, 20]]


def test_crowd_removed_and_negatives_kept(make_coco):
    crowd = box_ann(2, 1, [0, 0, 10, 10], iscrowd=1)
    crowd["segmentation"] = {"size": [20, 30], "counts": [0, 100, 500]}
    images = [image_entry(1), image_entry(2), image_entry(3)]
    anns = [box_ann(1, 1, [5, 5, 10, 10]), crowd, box_ann(3, 3, [1, 1, 3, 3], iscrowd=1)]
    ann_file, image_dir = make_coco(images, anns)
    ds = CocoDataset(ann_file, image_dir)
    assert len(ds) == 3
    assert ds.stats.crowd == 2 and ds.stats.targets == 1
    assert ds.stats.negative_images == 2  # image 2 has nothing, image 3 only a crowd region
    assert len(ds[0].gt) == 1
    for i in (1, 2):
        sample = ds[i]
        assert len(sample.gt) == 0
        assert sample.gt.masks.shape == (0, 20, 30) and sample.gt.boxes.shape == (0, 4)
        assert sample.image.shape == (3, 20, 30)
    assert [ds[i].image_id for i in range(3)] == [1, 2, 3]
    assert len(ds.coco.anns) == 3  # the pycocotools index keeps everything (for evaluation)


def test_category_map_non_contiguous_ids_and_back(make_coco):
    ann_file, image_dir = make_coco([image_entry(1)], [box_ann(1, 1, [1, 1, 5, 5])])
    cmap = CocoDataset(ann_file, image_dir).categories
    assert cmap.category_ids == (3, 7, 11)
    assert cmap.names_by_label == ("__background__", "dog", "cat", "fox")
    assert cmap.num_classes == 4
    assert [cmap.label(c) for c in (3, 7, 11)] == [1, 2, 3]
    assert [cmap.category_id(k) for k in (1, 2, 3)] == [3, 7, 11]
    with pytest.raises(KeyError, match="unknown category id 4"):
        cmap.label(4)
    with pytest.raises(KeyError):
        cmap.category_id(0)
    restored = CategoryMap.from_dict(json.loads(json.dumps(cmap.to_dict())))
    assert restored == cmap and restored.label(11) == 3
    with pytest.raises(ValueError, match="duplicate"):
        CategoryMap.from_dict({"category_ids": [1, 1], "names": ["a", "b"]})


def test_validation_set_uses_the_training_map(make_coco):
    train_file, image_dir = make_coco([image_entry(1)], [box_ann(1, 1, [1, 1, 5, 5])])
    train_map = CocoDataset(train_file, image_dir).categories
    val_file, _ = make_coco(
        [image_entry(1)],
        [box_ann(1, 1, [1, 1, 5, 5], category_id=11)],
        categories=[{"id": 11, "name": "fox"}],
        name="val.json",
    )
    val = CocoDataset(val_file, image_dir, categories=train_map)
    assert val.targets(0).labels.tolist() == [3]
    renamed, _ = make_coco(
        [image_entry(1)], [], categories=[{"id": 11, "name": "wolf"}], name="renamed.json"
    )
    with pytest.raises(DatasetError, match="renamed.json.*'wolf'.*'fox'"):
        CocoDataset(renamed, image_dir, categories=train_map)


def test_missing_files_and_unknown_categories_named_before_decoding(make_coco, monkeypatch):
    def no_decoding(path):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(coco_module, "load_image", no_decoding)
    images = [image_entry(i) for i in range(1, 11)]
    anns = [box_ann(1, 1, [1, 1, 5, 5], category_id=99), box_ann(2, 2, [1, 1, 5, 5])]
    ann_file, image_dir = make_coco(images, anns)
    for i in range(3, 11):
        (image_dir / f"img{i}.png").unlink()
    with pytest.raises(DatasetError) as info:
        CocoDataset(ann_file, image_dir)
    message = str(info.value)
    assert str(ann_file) in message
    assert "unknown_category x1: annotation 1 (category_id 99)" in message
    assert "missing_image x8" in message
    assert "img3.png" in message and "img7.png" in message and "3 more" in message
    assert "img8.png" not in message  # only the first few are listed


TALL = np.ones((30, 20), dtype=bool)  # a mask of the wrong size for a 20x30 image


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"annotations": [box_ann(1, 5, [1, 1, 5, 5])]}, "unknown_image.*image_id 5"),
        ({"annotations": [box_ann(1, 1, [1, 1, 5, 5]), box_ann(1, 1, [2, 2, 5, 5])]}, "duplicate"),
        ({"annotations": [{**box_ann(1, 1, [1, 1, 5, 5]), "bbox": [1, 1, 5]}]}, "bbox must be 4"),
        ({"annotations": [box_ann(1, 1, [1, 1, 5, 5], segmentation="x")]}, "bad_segmentation"),
        (
            {
                "annotations": [
                    box_ann(1, 1, [1, 1, 5, 5], segmentation=encode_binary_mask(np.ones((30, 20))))
                ]
            },
            r"RLE size \[30, 20\] but image is \[20, 30\]",
        ),
        ({"images": [{"id": 1, "file_name": "img1.png"}]}, r"images\[0\].*no \['width'"),
        ({"annotations": [box_ann(1, 1, [1, 1, 5, 5], category_id="7")]}, "category_id an int"),
        ({"images": [{**image_entry(1), "id": [1]}]}, r"images\[0\] \(id must be an integer"),
    ],
)
def test_malformed_entries_are_named(make_coco, change, expected):
    ann_file, image_dir = make_coco(
        change.get("images", [image_entry(1)]), change.get("annotations", [])
    )
    with pytest.raises(DatasetError, match=expected):
        CocoDataset(ann_file, image_dir)


def test_unparsable_annotation_file_is_named(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetError, match="broken.json: not a valid JSON"):
        CocoDataset(bad, tmp_path)
    bad.write_text("[]")
    with pytest.raises(DatasetError, match="broken.json: expected a JSON object"):
        CocoDataset(bad, tmp_path)


def test_degenerate_annotations_dropped_and_counted(make_coco):
    anns = [
        box_ann(1, 1, [2, 2, 6, 6]),  # good
        box_ann(2, 1, [2, 2, 0, 6]),  # zero width
        box_ann(3, 1, [2, 2, 6, -1]),  # negative height
        box_ann(4, 1, [40, 2, 6, 6]),  # entirely outside the image
        box_ann(5, 1, [2, 2, 6, 6], segmentation=[[2, 2, 8, 8]]),  # 2 points (not a box!)
        box_ann(6, 1, [2, 2, 6, 6], segmentation=[[2, 2, 8, 8], [2, 2, 8, 2, 8, 8]]),  # 1 good
        box_ann(7, 1, [2, 2, 6, 6], segmentation=[]),  # no segmentation
        box_ann(8, 1, [2, 2, 6, 6], segmentation=[[2, 2, 5, 5, 8, 8]]),  # collinear: empty
    ]
    ann_file, image_dir = make_coco([image_entry(1)], anns)
    ds = CocoDataset(ann_file, image_dir)
    assert ds.stats.degenerate_boxes == 3
    assert ds.stats.degenerate_polygons == 1
    assert ds.stats.missing_segmentations == 1
    assert ds.stats.targets == 3
    gt = ds[0].gt
    assert len(gt) == 2  # annotation 8 rasterises to nothing
    assert ds.stats.empty_masks == 1
    assert gt.masks.flatten(1).any(dim=1).all()


def test_corrupt_image_named_or_skipped(make_coco, caplog):
    ann_file, image_dir = make_coco(
        [image_entry(1), image_entry(2), image_entry(3)], [box_ann(1, 3, [1, 1, 5, 5])]
    )
    (image_dir / "img1.png").write_bytes(b"not an image at all")
    good = (image_dir / "img2.png").read_bytes()
    (image_dir / "img2.png").write_bytes(good[: len(good) // 2])  # truncated
    ds = CocoDataset(ann_file, image_dir)  # construction does not decode
    with pytest.raises(BadImageError, match="img1.png"):
        ds[0]
    with pytest.raises(BadImageError, match="img2.png"):
        ds[1]
    skipping = CocoDataset(ann_file, image_dir, skip_bad_images=True)
    sample = skipping[0]
    assert sample.image_id == 3 and len(sample.gt) == 1
    assert skipping.stats.bad_images_skipped == 2
    assert "img1.png" in caplog.text
    assert skipping[1].image_id == 3 and skipping.stats.bad_images_skipped == 2  # remembered


def test_size_mismatch_with_the_annotation_file(make_coco):
    ann_file, image_dir = make_coco([image_entry(1)], [])
    data = json.loads(ann_file.read_text())
    data["images"][0]["width"] = 31
    ann_file.write_text(json.dumps(data))
    with pytest.raises(BadImageError, match="img1.png is 30x20.*says 31x20"):
        CocoDataset(ann_file, image_dir)[0]
    with pytest.raises(DatasetError, match="size_mismatch x1: image 1 \\(img1.png\\)"):
        CocoDataset(ann_file, image_dir, check_sizes=True)


def test_aspect_ratios_from_the_annotation_file(make_coco, monkeypatch):
    images = [image_entry(2, 20, 30), image_entry(1, 30, 20), image_entry(3, 10, 10)]
    ann_file, image_dir = make_coco(images, [])
    monkeypatch.setattr(coco_module, "load_image", None)  # nothing may be decoded
    ds = CocoDataset(ann_file, image_dir)
    assert ds.image_ids == [1, 2, 3]
    assert ds.aspect_ratios() == pytest.approx([20 / 30, 30 / 20, 1.0])
    with pytest.raises(IndexError, match="out of range"):
        ds.targets(3)
