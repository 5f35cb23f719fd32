"""--init: a pretrained model into one with other classes, rows carried over by name."""

from __future__ import annotations

import pytest
import torch

from maskrcnn import build_model, preset, save_model
from maskrcnn.weights.finetune import (
    BBOX_PRED,
    CLS_SCORE,
    MASK_PREDICTOR,
    init_from_source,
    match_classes,
    read_init_source,
)

SOURCE_NAMES = ("__background__", "circle", "square", "triangle", "star")
TARGET_NAMES = ("__background__", "Hexagon", "SQUARE", "circle")


def _cfg(names, **changes):
    cfg = preset("r18_fpn", num_classes=len(names)).replace(category_names=tuple(names))
    return cfg.replace(**changes)


def test_match_classes_by_name_map_and_background():
    m = match_classes(TARGET_NAMES, SOURCE_NAMES)
    assert m == {0: (0, "background"), 2: (2, "name"), 3: (1, "name")}
    m = match_classes(TARGET_NAMES, SOURCE_NAMES, {"hexagon": "star", "circle": ""})
    assert m == {0: (0, "background"), 1: (4, "map"), 2: (2, "name")}
    assert match_classes(("bg", "traffic-light"), ("__background__", "Traffic_Light"))[1][0] == 1
    with pytest.raises(ValueError, match="not a category of the data"):
        match_classes(TARGET_NAMES, SOURCE_NAMES, {"rider": "circle"})
    with pytest.raises(ValueError, match="the source has no category 'person'"):
        match_classes(TARGET_NAMES, SOURCE_NAMES, {"circle": "person"})


def test_native_file_rows_carried_bit_equal_and_others_fresh(tmp_path):
    torch.manual_seed(0)
    source_model = build_model(_cfg(SOURCE_NAMES))
    path = save_model(source_model, tmp_path / "src.safetensors")
    source = read_init_source(path)
    torch.manual_seed(5)
    model = build_model(source.config.replace(num_classes=4, category_names=TARGET_NAMES))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_source(model, source, target_names=TARGET_NAMES)
    src, got = source_model.state_dict(), model.state_dict()
    for key in (CLS_SCORE + "weight", CLS_SCORE + "bias", MASK_PREDICTOR + "weight"):
        for t, s in ((0, 0), (2, 2), (3, 1)):
            assert torch.equal(got[key][t], src[key][s])
        assert torch.equal(got[key][1], fresh[key][1])  # hexagon: the model's own init
    box = BBOX_PRED + "weight"
    assert torch.equal(got[box][12:16], src[box][4:8])  # circle: source label 1
    assert torch.equal(got[box][4:8], fresh[box][4:8])
    key = "backbone.bottom_up.res3.0.conv1.conv.weight"
    assert torch.equal(got[key], src[key]) and key in report.loaded
    assert [c[:2] for c in report.carried] == [("SQUARE", "square"), ("circle", "circle")]
    assert report.fresh_classes == ["Hexagon"]
    report.write(tmp_path / "run")
    text = (tmp_path / "run" / "init_report.txt").read_text()
    assert "SQUARE <- square" in text and "Hexagon" in text


def test_a_contradicting_setting_names_the_tensor_and_both_shapes(tmp_path):
    path = save_model(build_model(_cfg(SOURCE_NAMES)), tmp_path / "src.safetensors")
    source = read_init_source(path)
    cfg = source.config.replace(num_classes=4, category_names=TARGET_NAMES)
    cfg = cfg.replace(fpn=type(cfg.fpn)(out_channels=128))
    model = build_model(cfg)
    with pytest.raises(ValueError, match=r"fpn\..*\[256, .*\] in the source, \[128, "):
        init_from_source(model, source, target_names=TARGET_NAMES)


def test_training_checkpoint_source(tmp_path):
    torch.manual_seed(0)
    source_model = build_model(_cfg(SOURCE_NAMES))
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "format": "maskrcnn-train/2",
            "iteration": 7,
            "model": source_model.state_dict(),
            "model_config": source_model.cfg.to_dict(),
        },
        path,
    )
    source = read_init_source(tmp_path)  # a run folder names its last.ckpt
    assert source.category_names == SOURCE_NAMES and "step 7" in source.description
    model = build_model(source.config.replace(num_classes=4, category_names=TARGET_NAMES))
    init_from_source(model, source, target_names=TARGET_NAMES)
    assert torch.equal(
        model.state_dict()[CLS_SCORE + "weight"][3],
        source_model.state_dict()[CLS_SCORE + "weight"][1],
    )


def test_torchvision_v1_source_uses_the_coco_91_layout(tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    source = read_init_source(path)
    assert source.config.backbone.norm_eps == 1e-5  # plain BatchNorm: num_batches_tracked
    names = ("__background__", "traffic_light", "Person", "rider")
    model = build_model(source.config.replace(num_classes=4, category_names=names))
    report = init_from_source(model, source, target_names=names)
    w = model.state_dict()[CLS_SCORE + "weight"]
    ref = tv.state_dict()["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(w[1], ref[10]) and torch.equal(w[2], ref[1]) and torch.equal(w[0], ref[0])
    assert report.fresh_classes == ["rider"]
    assert any(k.endswith("num_batches_tracked") for k in report.dropped)


def test_cli_fine_tuning_options_become_the_model_spec(tmp_path):
    import argparse

    import pytest as _pytest

    from maskrcnn.cli.train import add_train_command, build_config, parse_init_map
    from maskrcnn.data.shapes import write_shapes_dataset

    assert parse_init_map(["rider=person,van=car", "hexagon="]) == (
        ("rider", "person"),
        ("van", "car"),
        ("hexagon", ""),
    )
    with _pytest.raises(ValueError, match="DATA_NAME=SOURCE_NAME"):
        parse_init_map(["rider"])
    files = write_shapes_dataset(
        tmp_path / "d", train=1, val=0, seed=0, image_size=(64, 64), classes=("cross", "circle")
    )
    assert files.train_ann.read_text().count('"name": "cross"') == 1
    parser = argparse.ArgumentParser()
    add_train_command(parser.add_subparsers())
    args = parser.parse_args(
        ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--init", "m.pth",
         "--init-map", "cross=star", "--freeze-at", "3", "--backbone-norm", "bn"]
    )  # fmt: skip
    cfg, _ = build_config(args)
    assert cfg.model.init == "m.pth" and cfg.model.init_arch == "source"
    assert cfg.model.init_map == (("cross", "star"),)
    assert cfg.model.overrides == {"backbone.freeze_at": 3, "backbone.norm": "bn"}


def test_published_name_through_the_hub_cache_and_the_offline_error(monkeypatch, tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    from maskrcnn.weights.pretrained import PUBLISHED, WeightsUnavailableError, hub_cache_path

    def refuse(url, *args, **kwargs):
        raise OSError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    name = "maskrcnn_resnet50_fpn_v2_coco"
    with pytest.raises(WeightsUnavailableError, match="copy it to"):
        read_init_source(name)
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
    cached = hub_cache_path(PUBLISHED[name].url)
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tv.state_dict(), cached)
    source = read_init_source(name)
    assert source.config.fpn.norm == "bn" and source.category_names[1] == "person"
    names = ("__background__", "dog", "unicorn")
    model = build_model(source.config.replace(num_classes=3, category_names=names))
    report = init_from_source(model, source, target_names=names)
    ref = tv.state_dict()["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert torch.equal(model.state_dict()[MASK_PREDICTOR + "weight"][1], ref[18])  # dog: id 18
    assert report.fresh_classes == ["unicorn"]


def test_detectron2_pkl_source_uses_the_coco_80_layout(tmp_path):
    import pickle

    from weights.test_detectron2 import SMALL, d2_arrays

    from maskrcnn.config import detectron2_config

    torch.manual_seed(0)
    d2_model = build_model(detectron2_config(80, **SMALL))
    arrays = d2_arrays(d2_model)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": arrays}, handle, protocol=3)
    source = read_init_source(path)
    assert source.category_names[1] == "person" and source.config.num_classes == 81
    names = ("__background__", "Zebra", "rider")
    model = build_model(source.config.replace(num_classes=3, category_names=names))
    init_from_source(model, source, target_names=names)
    zebra = 23  # our label of COCO's zebra in the 80 + 1 layout (detectron2 class 22)
    got, ref = model.state_dict(), d2_model.state_dict()
    assert torch.equal(got[CLS_SCORE + "weight"][1], ref[CLS_SCORE + "weight"][zebra])
    assert torch.equal(
        got[BBOX_PRED + "bias"][4:8], ref[BBOX_PRED + "bias"][4 * zebra : 4 * zebra + 4]
    )
