"""A small randomised model whose detections depend on the image, exported once per session."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from maskrcnn.config import preset
from maskrcnn.export import OnnxMaskRCNN, export_onnx
from maskrcnn.modeling import MaskRCNN, build_model
from maskrcnn.modeling.randomize import randomize_


@pytest.fixture(scope="session")
def small_model() -> MaskRCNN:
    """r18_fpn, 160-pixel input, slim heads, random weights (seed 1), 3 classes.

    The class logits are scaled up (x4) so that scores follow the image: textured images
    get tens of detections above 0.5 and a uniform grey image none (its best is about 0.40).
    """
    cfg = preset("r18_fpn", num_classes=4).replace(category_names=("", "cat", "dog", "kite"))
    cfg = cfg.replace(
        input=dataclasses.replace(cfg.input, min_size=(160,), max_size=256),
        fpn=dataclasses.replace(cfg.fpn, out_channels=64),
        rpn=dataclasses.replace(cfg.rpn, pre_nms_topk_test=300, post_nms_topk_test=200),
        box_head=dataclasses.replace(cfg.box_head, fc_dim=256, score_thresh=0.5),
        mask_head=dataclasses.replace(cfg.mask_head, conv_dim=64),
    )
    model = randomize_(build_model(cfg), seed=1)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="session")
def small_onnx(small_model: MaskRCNN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``small_model`` exported with a uint8 input, traced on a 160 x 200 example."""
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    return export_onnx(small_model, path, input_dtype="uint8", example_size=(160, 200))


@pytest.fixture(scope="session")
def small_runtime(small_onnx: Path) -> OnnxMaskRCNN:
    """``small_onnx`` on onnxruntime's CPU provider, two threads."""
    return OnnxMaskRCNN(small_onnx, threads=2)
