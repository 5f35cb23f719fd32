"""Every preset builds and runs on a small image on CPU, masks included."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from maskrcnn import build_model, preset
from maskrcnn.config import PRESETS
from maskrcnn.modeling.randomize import randomize_


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_and_runs(name):
    cfg = preset(name, num_classes=5)
    cfg = cfg.replace(
        input=dataclasses.replace(cfg.input, min_size=(96,), max_size=128),
        box_head=dataclasses.replace(cfg.box_head, score_thresh=0.0, detections_per_image=10),
    )
    torch.manual_seed(0)
    # Fresh FrozenBN stages (identity statistics) blow activations up; the helper keeps them sane.
    model = randomize_(build_model(cfg), seed=0).eval()
    image = torch.rand(3, 90, 120)
    with torch.no_grad():
        (out,) = model([image])
    n = len(out["boxes"])
    assert n > 0, "no detection reached the mask head"
    assert out["masks"].shape == (n, 1, 90, 120)
    assert out["labels"].min() >= 1 and out["labels"].max() <= 4
    assert (out["boxes"][:, 2] <= 120).all() and (out["boxes"][:, 3] <= 90).all()
    assert float(out["masks"].min()) >= 0.0 and float(out["masks"].max()) <= 1.0


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="r50_fpn"):
        preset("r51_fpn")


def test_c4_has_res5_as_shared_head():
    model = build_model(preset("r50_c4", num_classes=3))
    assert model.roi_heads.shared_head is not None
    assert model.rpn_features == ("res4",)
    assert model.roi_heads.box_predictor.cls_score.in_features == 2048


@pytest.mark.parametrize(("head", "level", "stride"), [("c5", "res5", 32), ("c4_fc", "res4", 16)])
def test_single_level_designs_pool_one_level_without_fpn(head, level, stride):
    """head="c5" (Table 2d): the RPN and both RoI branches read res5 alone, at stride 32;
    "c4_fc" the same on res4 (stride 16), with no res5 at all."""
    cfg = preset("r18_fpn", num_classes=3).replace(
        head=head,
        anchors=dataclasses.replace(preset("r50_c4").anchors, sizes=((32, 64, 128),)),
    )
    cfg = cfg.replace(
        input=dataclasses.replace(cfg.input, min_size=(96,), max_size=128),
        box_head=dataclasses.replace(cfg.box_head, score_thresh=0.0, detections_per_image=5),
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.rpn_features == model.roi_features == (level,)
    assert not hasattr(model.backbone, "fpn") and model.roi_heads.shared_head is None
    assert hasattr(model.backbone, "res5") == (head == "c5")
    assert model.roi_heads.box_pooler.strides == model.roi_heads.mask_pooler.strides == (stride,)
    assert model.roi_heads.box_predictor.cls_score.in_features == cfg.box_head.fc_dim
    image = torch.rand(3, 96, 128)
    target = {
        "boxes": torch.tensor([[10.0, 20.0, 60.0, 70.0]]),
        "labels": torch.tensor([1]),
        "masks": torch.zeros(1, 96, 128, dtype=torch.uint8),
    }
    target["masks"][0, 20:70, 10:60] = 1
    losses = model([image], [target])
    assert set(losses) >= {"loss_mask", "loss_classifier", "loss_objectness"}
    sum(losses.values()).backward()
    assert getattr(model.backbone, level)[0].conv1.conv.weight.grad is not None
    with torch.no_grad():
        (out,) = randomize_(model, seed=0).eval()([image])
    assert out["masks"].shape[1:] == (1, 96, 128)
