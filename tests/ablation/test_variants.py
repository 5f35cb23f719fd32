"""The ablation tables as data: every row's setting exists and changes the model it builds."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.ablation import TABLES, plan_runs, select_tables
from maskrcnn.ablation.variants import BACKBONES, Variant
from maskrcnn.modeling import build_model
from maskrcnn.modeling.mask_head import MaskFCNHead, MaskMLPHead
from maskrcnn.train.model_spec import ModelSpec


def _model(v: Variant):
    cfg = ModelSpec(preset=v.preset, overrides=v.model_overrides).model_config(num_classes=5)
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _row(table: str, label: str) -> Variant:
    (v,) = [v for v in TABLES[table] if v.label == label]
    return v


def test_2c_rows_pool_with_their_operator_in_both_branches_on_stride_16():
    ops = {}
    for v in TABLES["2c"]:
        cfg, model = _model(v)
        heads = model.roi_heads
        assert heads.box_pooler.cfg.op == heads.mask_pooler.cfg.op
        assert heads.box_pooler.strides == (16,) and cfg.head == "c4_fc"
        ops[v.label] = heads.box_pooler.cfg.op
    assert ops == {
        "RoIPool": "pool",
        "RoIWarp max": "warp_max",
        "RoIWarp avg": "warp",
        "RoIAlign max": "align_max",
        "RoIAlign avg": "align",
    }


def test_2d_is_single_level_stride_32_and_2e_is_fpn():
    for v in TABLES["2d"]:
        cfg, model = _model(v)
        assert cfg.head == "c5" and model.roi_features == ("res5",)
        assert model.roi_heads.box_pooler.strides == (32,)
    assert _model(_row("2d", "RoIPool"))[0].box_head.pooler.op == "pool"
    assert _model(_row("2d", "RoIAlign"))[0].box_head.pooler.op == "align"
    mlp = _model(_row("2e", "MLP fc-fc-fc (1024, 1024, Kx28x28)"))[1]
    fcn = _model(_row("2e", "FCN"))[1]
    assert isinstance(mlp.roi_heads.mask_head, MaskMLPHead)
    assert isinstance(fcn.roi_heads.mask_head, MaskFCNHead)
    assert mlp.roi_features == ("p2", "p3", "p4", "p5")


def test_2b_loss_and_class_agnostic_rows():
    softmax, sigmoid = (_model(v)[1] for v in TABLES["2b"])
    assert softmax.roi_heads.mask_cfg.loss == "softmax"
    assert sigmoid.roi_heads.mask_cfg.loss == "sigmoid"
    agnostic, specific = (_model(v)[1] for v in TABLES["agnostic"])
    assert agnostic.roi_heads.mask_head.predictor.out_channels == 1
    assert specific.roi_heads.mask_head.predictor.out_channels == 5


def test_rows_of_the_same_model_share_runs():
    assert _row("2b", "sigmoid").run_name == _row("2c", "RoIAlign avg").run_name == "c4-baseline"
    assert _row("2c", "RoIPool").run_name == "c4-pool"
    assert _row("2c", "RoIPool").run_name != _row("2d", "RoIPool").run_name
    assert len(plan_runs(select_tables(["2c", "2d"]), [0, 1, 2])) == 21
    # all: 7 C4 models (5 operators, softmax, class-agnostic), 2 C5, 2 FPN
    assert len(plan_runs(select_tables(["all"]), [0])) == 11
    names = [v.run_name for v in select_tables(["all"])]
    assert len({n for n in names}) == 11


def test_bad_table_and_backbone_are_named():
    with pytest.raises(ValueError, match="2f"):
        select_tables(["2f"])
    with pytest.raises(ValueError, match="r50"):
        Variant("x", "y", "r50")
    assert set(BACKBONES) == {"c4", "c5", "fpn"}
