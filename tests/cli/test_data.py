"""The synthetic shapes writer, check_dataset and the ``maskrcnn data`` commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from pycocotools import mask as mask_utils

from maskrcnn.cli.data import add_data_commands
from maskrcnn.data.annotations import Kind
from maskrcnn.data.check import check_dataset, format_report
from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.shapes import ShapesFiles, write_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> ShapesFiles:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), train=12, val=3, seed=0)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="maskrcnn")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_shapes_load_through_coco_dataset(shapes):
    train = CocoDataset(shapes.train_ann, shapes.image_dir, check_sizes=True)
    val = CocoDataset(shapes.val_ann, shapes.image_dir, categories=train.categories)
    assert len(train) == 12 and len(val) == 3
    assert train.categories.category_ids == (1, 3, 7, 11)
    assert train.categories.names == ("circle", "square", "triangle", "star")
    assert train.stats.targets == train.stats.annotations > 20
    assert train.stats.negative_images >= 1
    assert {r >= 1 for r in train.aspect_ratios()} == {True, False}  # both orientations
    for i in range(len(train)):
        sample = train[i]
        assert sample.image.shape[1:] == sample.gt.masks.shape[1:]
        assert set(sample.gt.labels.tolist()) <= {1, 2, 3, 4}
        assert (sample.gt.masks.sum(dim=0) <= 1).all()  # visible parts do not overlap
    assert train.stats.empty_masks == 0


def test_shapes_annotations_are_exact_and_varied(shapes):
    data = json.loads(shapes.train_ann.read_text())
    kinds = set()
    areas = []
    for ann in data["annotations"]:
        segm = ann["segmentation"]
        kinds.add("polygon" if isinstance(segm, list) else type(segm["counts"]).__name__)
        img = next(i for i in data["images"] if i["id"] == ann["image_id"])
        h, w = img["height"], img["width"]
        if isinstance(segm, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
        else:
            rle = mask_utils.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else segm
        assert int(mask_utils.area(rle)) == ann["area"]
        assert mask_utils.toBbox(rle).tolist() == pytest.approx(ann["bbox"])
        areas.append(ann["area"])
    assert kinds == {"polygon", "str", "list"}  # polygons, compressed and uncompressed RLE
    assert min(areas) < 150 and max(areas) > 2000  # from ~10 px across to ~half the image


def test_same_class_instances_touch_or_overlap(shapes):
    dataset = CocoDataset(shapes.train_ann, shapes.image_dir)
    touching = 0
    for i in range(len(dataset)):
        gt = dataset.targets(i)
        masks = gt.masks.numpy()
        grown = masks.copy()  # 1-pixel dilation
        grown[:, 1:] |= masks[:, :-1]
        grown[:, :-1] |= masks[:, 1:]
        grown[:, :, 1:] |= masks[:, :, :-1]
        grown[:, :, :-1] |= masks[:, :, 1:]
        for a in range(len(gt)):
            for b in range(a + 1, len(gt)):
                same = gt.labels[a] == gt.labels[b]
                touching += int(same and (grown[a] & masks[b]).any())
    assert touching >= 2


def test_shapes_are_deterministic(shapes, tmp_path):
    again = write_shapes_dataset(tmp_path / "a", train=12, val=3, seed=0)
    assert again.train_ann.read_text() == shapes.train_ann.read_text()
    name = "train_00004.png"
    assert (again.image_dir / name).read_bytes() == (shapes.image_dir / name).read_bytes()
    other = write_shapes_dataset(tmp_path / "b", train=2, val=0, seed=1)
    assert (
        json.loads(other.train_ann.read_text())["annotations"]
        != json.loads(again.train_ann.read_text())["annotations"][:2]
    )


def test_check_passes_on_shapes(shapes):
    report = check_dataset(shapes.train_ann, shapes.image_dir)
    assert not report.has_errors
    assert [p for p in report.issues if p.severity != "info"] == []
    assert report.num_images == 12 and report.num_categories == 4
    assert report.count(Kind.EMPTY_IMAGE) >= 1


def _broken_copy(shapes: ShapesFiles, tmp_path: Path) -> tuple[Path, Path]:
    data = json.loads(shapes.train_ann.read_text())
    images = {img["id"]: img for img in data["images"]}
    anns = data["annotations"]
    anns[0]["category_id"] = 42
    anns[1]["bbox"] = [5, 5, 0, 10]
    anns[2]["segmentation"] = [[1, 1, 9, 9]]
    anns[3]["iscrowd"] = 1
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for img in data["images"]:
        (image_dir / img["file_name"]).write_bytes(
            (shapes.image_dir / img["file_name"]).read_bytes()
        )
    (image_dir / images[1]["file_name"]).unlink()
    (image_dir / images[2]["file_name"]).write_bytes(b"\x89PNG broken")
    images[3]["width"] += 2
    ann_file = tmp_path / "broken.json"
    ann_file.write_text(json.dumps(data))
    return ann_file, image_dir


def test_check_finds_and_names_problems(shapes, tmp_path):
    ann_file, image_dir = _broken_copy(shapes, tmp_path)
    report = check_dataset(ann_file, image_dir)
    assert report.has_errors
    expected = {
        Kind.UNKNOWN_CATEGORY: 1,
        Kind.DEGENERATE_BOX: 1,
        Kind.DEGENERATE_POLYGON: 1,
        Kind.CROWD: 1,
        Kind.MISSING_IMAGE: 1,
        Kind.UNREADABLE_IMAGE: 1,
        Kind.SIZE_MISMATCH: 1,
    }
    for kind, n in expected.items():
        assert report.count(kind) == n, kind
    assert "train_00000.png" in report.of_kind(Kind.MISSING_IMAGE)[0].subject
    assert "file is 256x192" in report.of_kind(Kind.SIZE_MISMATCH)[0].detail
    table = format_report(report)
    assert "unknown_category" in table and "category_id 42" in table
    assert table.splitlines()[-1].startswith("FAILED: 4 error(s), 2 warning(s)")
    quick = check_dataset(ann_file, image_dir, decode=False)
    assert quick.count(Kind.UNREADABLE_IMAGE) == 1  # the header itself is broken


def test_check_reports_an_unparsable_file(tmp_path):
    (tmp_path / "x.json").write_text("{")
    report = check_dataset(tmp_path / "x.json", tmp_path)
    assert report.has_errors and "x.json" in format_report(report)


def test_cli_shapes_then_check(tmp_path, capsys):
    out = tmp_path / "set"
    args = parse(["data", "shapes", str(out), "--train", "3", "--val", "1", "--seed", "2"])
    assert args.func(args) == 0
    assert (out / "train.json").is_file() and (out / "val.json").is_file()
    assert len(list((out / "images").glob("*.png"))) == 4
    args = parse(["data", "check", "--ann", str(out / "val.json"), "--images", str(out / "images")])
    assert args.func(args) == 0
    assert "OK: 0 error(s)" in capsys.readouterr().out


def test_cli_check_fails_on_errors(shapes, tmp_path, capsys):
    ann_file, image_dir = _broken_copy(shapes, tmp_path)
    args = parse(["data", "check", "--ann", str(ann_file), "--images", str(image_dir)])
    assert args.func(args) == 1
    printed = capsys.readouterr().out
    assert "missing_image" in printed and "train_00000.png" in printed
    with pytest.raises(SystemExit):
        parse(["data", "shapes", "x", "--train", "-1"])
    with pytest.raises(SystemExit):
        parse(["data", "check", "--ann", "a.json"])  # --images is required


@pytest.mark.parametrize("option", ["--height", "--width"])
def test_shapes_refuses_images_too_small(tmp_path, option, capsys):
    parser = argparse.ArgumentParser()
    add_data_commands(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "shapes", str(tmp_path / "s"), option, "8"])
    assert "expected at least 32 pixels, got 8" in capsys.readouterr().err
