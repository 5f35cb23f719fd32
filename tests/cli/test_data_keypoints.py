"""``maskrcnn data shapes --keypoints``: the stick-figure keypoint set through the CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
from PIL import Image

from maskrcnn.cli.data import add_data_commands
from maskrcnn.data.check import check_dataset
from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.figures import FIGURE_KEYPOINTS


def test_shapes_keypoints_command_writes_a_keypoint_set(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="maskrcnn")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["data", "shapes", str(tmp_path), "--train", "8", "--val", "2", "--keypoints"]
    )
    assert args.func(args) == 0
    assert "wrote 8 training and 2 validation images" in capsys.readouterr().out
    data = json.loads((tmp_path / "train.json").read_text())
    (category,) = data["categories"]
    assert category["keypoints"] == list(FIGURE_KEYPOINTS)
    assert min(min(p) for p in category["skeleton"]) == 1  # COCO's 1-based pairs
    for ann in data["annotations"]:
        assert len(ann["keypoints"]) == 33
        assert ann["num_keypoints"] == sum(v > 0 for v in ann["keypoints"][2::3])
    ds = CocoDataset(tmp_path / "train.json", tmp_path / "images", check_sizes=True)
    assert ds.keypoints is not None and len(ds) == 8
    assert not check_dataset(tmp_path / "train.json", tmp_path / "images").has_errors


def test_left_limbs_are_darker_than_right_ones(tmp_path):
    """The cue that tells left from right: pixels at left joints are darker than at right."""
    from maskrcnn.data.figures import write_figures_dataset

    files = write_figures_dataset(tmp_path, train=20, val=0, seed=4)
    data = json.loads(files.train_ann.read_text())
    darker = total = 0
    for ann in data["annotations"]:
        image = next(i for i in data["images"] if i["id"] == ann["image_id"])
        pixels = np.asarray(Image.open(files.image_dir / image["file_name"])).astype(float)
        kps = np.asarray(ann["keypoints"]).reshape(-1, 3)
        for left, right in ((4, 5), (9, 10)):  # hands, feet
            if kps[left, 2] == 2 and kps[right, 2] == 2:
                lx, ly = kps[left, :2].astype(int)
                rx, ry = kps[right, :2].astype(int)
                total += 1
                darker += pixels[ly, lx].sum() < pixels[ry, rx].sum()
    assert total > 20 and darker / total > 0.9
