"""``maskrcnn export`` and ``maskrcnn predict --onnx`` from the command line."""

from __future__ import annotations

import dataclasses
import json

import pytest
from PIL import Image
from tiny_coco import NAMES

from maskrcnn.cli import main
from maskrcnn.config import preset
from maskrcnn.modeling import build_model
from maskrcnn.modeling.randomize import randomize_
from maskrcnn.weights.native import save_model


def test_export_then_predict_with_the_graph(tmp_path, capsys):
    cfg = preset("r18_fpn", num_classes=3).replace(category_names=NAMES)
    cfg = cfg.replace(
        input=dataclasses.replace(cfg.input, min_size=(64,), max_size=96),
        fpn=dataclasses.replace(cfg.fpn, out_channels=32),
        box_head=dataclasses.replace(cfg.box_head, fc_dim=64, score_thresh=0.0),
        mask_head=dataclasses.replace(cfg.mask_head, conv_dim=32),
    )
    weights = save_model(randomize_(build_model(cfg), seed=0), tmp_path / "m.safetensors")
    graph = tmp_path / "m.onnx"
    argv = ["export", "--weights", str(weights), "--out", str(graph), "--example-size", "64", "80"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {graph}" in printed and "opset 17" in printed and "checked" in printed

    image = tmp_path / "in.png"
    Image.new("RGB", (90, 70), (200, 40, 90)).save(image)
    out = tmp_path / "pred"
    argv = ["predict", str(image), "--onnx", str(graph), "--out", str(out), "--workers", "0"]
    assert main([*argv, "--score-thresh", "0.0"]) == 0
    (record,) = json.loads((out / "predictions.json").read_text())
    assert (record["height"], record["width"]) == (70, 90) and len(record["boxes"]) > 0
    assert set(record["categories"]) <= {"square", "bar"}
    assert (out / "in.png").is_file()

    with pytest.raises(SystemExit, match="--weights .* or --onnx"):
        main(["predict", str(image), "--out", str(out)])
    with pytest.raises(SystemExit, match="--weights .* or --onnx"):
        main([*argv, "--weights", str(weights)])
    with pytest.raises(SystemExit, match="maskrcnn export: .*nowhere"):
        main(["export", "--weights", str(tmp_path / "nowhere.safetensors"), "--out", str(graph)])
