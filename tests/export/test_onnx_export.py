"""The exported graph against the eager model: other sizes than the example, zero detections,
torchvision weights; and what the graph is made of."""

from __future__ import annotations

import dataclasses

import onnx
import pytest
import torch
import torchvision
from onnx_parity import compare_detections, textured_image

from maskrcnn.config import preset
from maskrcnn.export import OnnxMaskRCNN, export_onnx
from maskrcnn.export.onnx_ops import OPSET
from maskrcnn.modeling import build_model
from maskrcnn.modeling.randomize import randomize_
from maskrcnn.weights.torchvision import from_torchvision


def _eager(model, image_uint8):
    with torch.inference_mode():
        return model.detect([image_uint8.float() / 255.0], paste_masks=False)[0]


def test_graph_has_standard_ops_only(small_model, small_onnx):
    proto = onnx.load(str(small_onnx))
    onnx.checker.check_model(proto)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)]
    assert {n.domain for n in proto.graph.node} == {""}
    ops = {n.op_type for n in proto.graph.node}
    assert {"RoiAlign", "NonMaxSuppression", "Resize", "TopK", "Pad"} <= ops
    roi_aligns = [n for n in proto.graph.node if n.op_type == "RoiAlign"]
    assert len(roi_aligns) == 8  # P2-P5 for the box branch and for the mask branch
    assert small_model.cfg.box_head.pooler.aligned
    for node in roi_aligns:
        attrs = {a.name: a for a in node.attribute}
        assert attrs["coordinate_transformation_mode"].s == b"half_pixel"
    image = proto.graph.input[0]
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == [3, "height", "width"]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8


@pytest.mark.parametrize(
    "size",
    [(123, 201), (251, 97), (333, 301), (57, 71)],
    ids=["landscape-odd", "portrait", "downscaled", "tiny"],
)
def test_small_model_matches_eager_at_other_sizes(small_model, small_runtime, size):
    image = textured_image(*size, seed=size[0])
    eager = _eager(small_model, image)
    onnx_result = small_runtime.run(image)
    assert len(eager) > 0  # the comparison below has something to compare
    parity = compare_detections(
        eager,
        onnx_result,
        score_thresh=small_model.cfg.box_head.score_thresh,
        max_detections=small_model.cfg.box_head.detections_per_image,
        paste=small_model.cfg.mask_head.paste,
    )
    assert parity.num_matched > 0
    assert onnx_result.masks.shape[1:] == (1, 28, 28)
    assert onnx_result.category_names == [
        small_model.cfg.category_names[i] for i in onnx_result.labels.tolist()
    ]


def test_blank_image_gives_zero_detections(small_model, small_runtime):
    image = torch.full((3, 141, 187), 128, dtype=torch.uint8)
    assert len(_eager(small_model, image)) == 0
    runtime = small_runtime
    result = runtime.run(image)
    assert result.boxes.shape == (0, 4) and result.scores.shape == (0,)
    assert result.labels.shape == (0,) and result.labels.dtype == torch.int64
    assert result.masks.shape == (0, 1, 28, 28)
    pasted = runtime.detect([image.float() / 255.0])[0]
    assert pasted.masks.shape == (0, 1, 141, 187)
    assert runtime.predict(image.float() / 255.0).masks.shape == (0, 141, 187)


def test_torchvision_weights_model_matches_eager(tmp_path):
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    randomize_(tv, seed=0)
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.weight.mul_(4.0)  # scores spread over classes
    model = from_torchvision(
        tv.state_dict(),
        "v1",
        norm_eps=1e-5,
        min_size=128,
        max_size=192,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=60,
        box_score_thresh=0.07,
        box_detections_per_img=25,
    )
    del tv
    path = export_onnx(model, tmp_path / "tv.onnx", input_dtype="float32", example_size=(96, 128))
    proto = onnx.load(str(path), load_external_data=False)
    modes = {
        a.s
        for n in proto.graph.node
        if n.op_type == "RoiAlign"
        for a in n.attribute
        if a.name == "coordinate_transformation_mode"
    }
    assert modes == {b"output_half_pixel"}  # torchvision's RoIAlign is not aligned
    del proto
    runtime = OnnxMaskRCNN(path, threads=2)
    assert runtime.input_dtype == "float32" and runtime.cfg == model.cfg
    for size in [(97, 151), (171, 89)]:
        image = textured_image(*size, seed=size[1]).float() / 255.0
        with torch.inference_mode():
            eager = model.detect([image], paste_masks=False)[0]
        assert len(eager) > 0
        parity = compare_detections(
            eager,
            runtime.run(image),
            score_thresh=0.07,
            max_detections=25,
            paste=model.cfg.mask_head.paste,
        )
        assert parity.num_matched > 0


def test_unexportable_models_are_refused(tmp_path):
    cfg = preset("r18_fpn", num_classes=3)
    pool = cfg.replace(
        box_head=dataclasses.replace(
            cfg.box_head, pooler=dataclasses.replace(cfg.box_head.pooler, op="pool")
        )
    )
    with pytest.raises(ValueError, match="box_head.pooler.op='pool'"):
        export_onnx(build_model(pool).eval(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="opset 13"):
        export_onnx(build_model(cfg).eval(), tmp_path / "m.onnx", opset=13)
    with pytest.raises(ValueError, match="input_dtype"):
        export_onnx(build_model(cfg).eval(), tmp_path / "m.onnx", input_dtype="float16")


def test_c4_model_matches_eager(tmp_path):
    cfg = preset("r50_c4", num_classes=3)
    cfg = cfg.replace(
        backbone=dataclasses.replace(cfg.backbone, depth=18),
        input=dataclasses.replace(cfg.input, min_size=(128,), max_size=192),
        rpn=dataclasses.replace(cfg.rpn, pre_nms_topk_test=200, post_nms_topk_test=50),
        box_head=dataclasses.replace(cfg.box_head, detections_per_image=20),
    )
    model = randomize_(build_model(cfg), seed=0).eval()
    path = export_onnx(model, tmp_path / "c4.onnx", example_size=(96, 128))
    image = textured_image(101, 155, seed=3)
    eager = _eager(model, image)
    assert len(eager) > 0
    parity = compare_detections(
        eager,
        OnnxMaskRCNN(path, threads=2).run(image),
        score_thresh=cfg.box_head.score_thresh,
        max_detections=cfg.box_head.detections_per_image,
        paste=cfg.mask_head.paste,
    )
    assert parity.num_matched > 0
