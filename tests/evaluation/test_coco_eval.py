"""COCO evaluation: exact ground truth scores 1.0, errors score less, shards merge, memory bound."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from tiny_coco import CATEGORIES, NAMES, GroundTruthModel

from maskrcnn.cli.evaluate import add_eval_commands
from maskrcnn.evaluation import results as coco_format
from maskrcnn.evaluation.coco_eval import (
    STAT_NAMES,
    evaluate_coco,
    evaluate_shard,
    merge_shards,
    run_cocoeval,
    shard_indices,
)
from maskrcnn.evaluation.results import LabelMap, load_coco
from maskrcnn.evaluation.source import open_source
from maskrcnn.ops.paste import paste_masks_grid_sample
from maskrcnn.weights.native import save_model


def test_ground_truth_scores_one_and_files_are_valid(tiny_coco, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_coco(GroundTruthModel(), tiny_coco, out_dir=out, progress=False)
    assert result.bbox.ap == pytest.approx(1.0) and result.segm.ap == pytest.approx(1.0)
    assert result.bbox["AP50"] == pytest.approx(1.0) and result.segm["AR100"] == pytest.approx(1.0)
    assert (result.num_images, result.num_detections) == (3, 6)
    results = json.loads((out / "results.json").read_text())
    assert {r["category_id"] for r in results} == {3, 7}  # mapped back to the COCO ids
    keys = {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert all(set(r) == keys and isinstance(r["segmentation"]["counts"], str) for r in results)
    gt = load_coco(tiny_coco[0])
    assert len(gt.loadRes(str(out / "results.json")).anns) == 6
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["segm"]) == list(STAT_NAMES) and metrics["bbox"]["AP"] == 1.0
    table = (out / "ap_table.md").read_text()
    assert table == result.table() and "| bbox | 100.0 |" in table
    assert result.flat()["segm_AP"] == result.segm.ap


def test_shifted_detections_score_less(tiny_coco):
    result = evaluate_coco(GroundTruthModel(shift=3.0), tiny_coco, progress=False)
    assert 0.0 < result.bbox.ap < 1.0 and 0.0 < result.segm.ap < 1.0


def test_zero_detections_give_zero_ap(tiny_coco, tmp_path):
    result = evaluate_coco(
        GroundTruthModel(empty=True), tiny_coco, out_dir=tmp_path, progress=False
    )
    assert result.bbox.ap == 0.0 and result.segm.ap == 0.0 and result.num_detections == 0
    assert json.loads((tmp_path / "results.json").read_text()) == []
    timing = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=_refuse)["timing"]
    assert timing["cocoeval_seconds"] == {} and timing["cocoeval_images_per_second"] is None


def _refuse(name: str) -> None:
    raise ValueError(f"metrics.json holds {name}, which is not JSON")


def test_masks_are_pasted_and_encoded_one_at_a_time(tiny_coco, monkeypatch):
    shapes = []
    encode = coco_format.encode_binary_mask

    def spy(mask: np.ndarray) -> dict:
        shapes.append(mask.shape)
        return encode(mask)

    monkeypatch.setattr(coco_format, "encode_binary_mask", spy)
    model = GroundTruthModel()
    evaluate_coco(model, tiny_coco, max_images=2, progress=False)
    assert model.calls == 2  # one image per detect call
    assert shapes == [(48, 64), (48, 64), (56, 40)]  # one 2-D [H, W] plane per detection


def test_fake_world_of_two_gathers_to_the_same_result(tiny_coco):
    source = open_source(tiny_coco)
    labels = LabelMap.from_names(NAMES, CATEGORIES)
    model = GroundTruthModel(shift=1.0)
    shards = [evaluate_shard(model, source, shard_indices(3, r, 2), labels) for r in range(2)]
    assert shards[0].image_ids == [1, 3] and shards[1].image_ids == [2]
    merged = merge_shards(shards)
    whole = evaluate_shard(model, source, range(3), labels)
    assert merged.image_ids == [1, 2, 3]
    assert merged.detections == merge_shards([whole]).detections
    assert run_cocoeval(source.coco, merged) == run_cocoeval(source.coco, whole)
    assert merged.inference_seconds == max(s.inference_seconds for s in shards) > 0
    with pytest.raises(ValueError, match="overlap"):
        merge_shards([shards[0], shards[0]])


def test_dataset_source_and_category_forms(tiny_coco):
    ann, image_dir = tiny_coco
    coco = load_coco(ann)

    class Samples:  # the data package's CocoDataset interface, in miniature
        def __init__(self) -> None:
            self.ann_file = ann
            self.ids = sorted(coco.getImgIds())

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> SimpleNamespace:
            source = open_source((ann, image_dir))
            image, image_id = source.load(i)
            return SimpleNamespace(image=image, image_id=image_id, gt=None, file_name="")

    category_map = SimpleNamespace(names_by_label=NAMES)
    for categories in (None, {1: 3, 2: 7}, category_map):
        result = evaluate_coco(GroundTruthModel(), Samples(), categories=categories, progress=False)
        assert result.segm.ap == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not in the dataset"):
        evaluate_coco(GroundTruthModel(), tiny_coco, categories={1: 5}, progress=False)
    with pytest.raises(ValueError, match=r"missing from the model \['bar'\]"):
        LabelMap.from_names(("__background__", "square", "cat"), CATEGORIES)
    with pytest.raises(TypeError, match="neither `coco` nor `ann_file`"):
        open_source([torch.zeros(1)] * 3)


def test_with_the_data_package(tiny_coco):
    from maskrcnn.data.categories import CategoryMap
    from maskrcnn.data.coco import CocoDataset

    dataset = CocoDataset(*tiny_coco)
    result = evaluate_coco(
        GroundTruthModel(), dataset, categories=dataset.categories, progress=False
    )
    assert result.bbox.ap == pytest.approx(1.0) and result.segm.ap == pytest.approx(1.0)
    assert dataset.categories.names_by_label == NAMES
    other = CategoryMap(category_ids=(3, 8), names=("square", "bar"))
    with pytest.raises(ValueError, match=r"COCO ids \[8\] are not in the dataset"):
        evaluate_coco(GroundTruthModel(), dataset, categories=other, progress=False)


def test_detect_without_paste_keeps_roi_masks(tiny_model):
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        pasted = tiny_model.detect([image])[0]
        roi = tiny_model.detect([image], paste_masks=False)[0]
    assert roi.masks.shape == (len(roi), 1, 28, 28)
    assert torch.equal(roi.boxes, pasted.boxes) and roi.category_names == pasted.category_names
    torch.testing.assert_close(
        paste_masks_grid_sample(roi.masks, roi.boxes, (48, 64)), pasted.masks
    )


def test_eval_command_with_a_real_model(tiny_model, tiny_coco, tmp_path, capsys):
    weights = save_model(tiny_model, tmp_path / "model.safetensors")
    parser = argparse.ArgumentParser()
    add_eval_commands(parser.add_subparsers(dest="command"))
    ann, images = tiny_coco
    out = tmp_path / "out"
    argv = ["eval", "--weights", str(weights), "--ann", str(ann), "--images", str(images)]
    args = parser.parse_args([*argv, "--out", str(out), "--max-images", "2"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| segm |" in printed
    assert "inference: 2 images in " in printed and "COCOeval (faster): " in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["num_detections"] > 0
    timing = metrics["timing"]
    assert timing["num_images"] == 2 and timing["cocoeval_backend"] == "faster"
    assert set(timing["cocoeval_seconds"]) == {"ground_truth", "bbox", "segm"}
    assert timing["inference_seconds"] > 0 and timing["cocoeval_images_per_second"] > 0
    args = parser.parse_args([*argv, "--out", str(out), "--coco-backend", "pycocotools"])
    assert args.func(args) == 0
    assert "COCOeval (pycocotools): " in capsys.readouterr().out
    again = json.loads((out / "metrics.json").read_text())
    assert again["timing"]["cocoeval_backend"] == "pycocotools"
    assert set(again["timing"]["cocoeval_seconds"]) == {"bbox", "segm"}
    COCO(str(ann)).loadRes(str(out / "results.json"))

    data = json.loads(Path(ann).read_text())
    data["categories"][1]["name"] = "circle"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    args = parser.parse_args(["eval", "--weights", str(weights), "--ann", str(other)] + argv[5:])
    with pytest.raises(SystemExit, match=r"do not match .*other.json.*\['circle'\]"):
        args.func(args)
