"""Published weights by name (through torch.hub's cache, never downloaded here) and local files."""

from __future__ import annotations

import dataclasses
from urllib.error import URLError

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

from maskrcnn import (
    build_model,
    from_pretrained,
    from_torchvision,
    load_imagenet_backbone,
    save_model,
)
from maskrcnn.config import preset, r18_fpn, r50_c4
from maskrcnn.data.coco_names import COCO_91_NAMES
from maskrcnn.modeling.randomize import randomize_
from maskrcnn.weights.pretrained import PUBLISHED, WeightsUnavailableError, hub_cache_path
from maskrcnn.weights.torchvision import convert_torchvision_state_dict
from maskrcnn.weights.torchvision_keys import torchvision_resnet_key

SMALL = dict(min_size=128, max_size=160)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path):
    """Any download attempt fails the test; torch.hub's cache is a fresh temporary folder."""

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module")
def tv_v1_state():
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    return randomize_(model, seed=1).state_dict()


@pytest.fixture(scope="module")
def tv_resnet18_state():
    torch.manual_seed(0)
    return randomize_(resnet18(), seed=2).state_dict()


def _assert_holds(model, converted):
    ours = model.state_dict()
    converted = {  # FrozenBN has no batch counter
        k: v for k, v in converted.items() if k in ours or not k.endswith("num_batches_tracked")
    }
    assert set(converted) == set(ours)
    for key, value in converted.items():
        assert torch.equal(ours[key], value), key


def test_torchvision_pth_round_trip_via_local_path(tmp_path, tv_v1_state):
    path = tmp_path / "tv_maskrcnn.pth"
    torch.save(tv_v1_state, path)
    model = from_pretrained(path, norm_eps=1e-5, **SMALL)
    _assert_holds(model, convert_torchvision_state_dict(tv_v1_state))
    assert not model.training and model.cfg.category_names == COCO_91_NAMES
    assert model.cfg.backbone.norm_eps == 1e-5 and model.cfg.input.min_size == (128,)
    reference = from_torchvision(tv_v1_state, norm_eps=1e-5, **SMALL)
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model([image])[0]["boxes"], reference([image])[0]["boxes"])


def test_torchvision_v2_is_recognised(tmp_path):
    torch.manual_seed(0)
    state = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None).state_dict()
    path = tmp_path / "v2.pth"
    torch.save({"model": state}, path)  # a training checkpoint's wrapper is unwrapped too
    model = from_pretrained(path)
    assert model.cfg.fpn.norm == "bn" and model.cfg.box_head.num_convs == 4
    _assert_holds(model, convert_torchvision_state_dict(state))


def test_published_name_is_served_from_the_hub_cache(tv_v1_state):
    url = PUBLISHED["maskrcnn_resnet50_fpn_coco"].url
    cached = hub_cache_path(url)
    assert str(cached).startswith(torch.hub.get_dir()) and cached.name in url
    cached.parent.mkdir(parents=True)
    # Not the published file, so its hash prefix does not match: torch.hub checks hashes
    # only of files it downloads, and a file in the cache is used as it is.
    torch.save(tv_v1_state, cached)
    model = from_pretrained("maskrcnn_resnet50_fpn_coco", box_score_thresh=0.2)
    _assert_holds(model, convert_torchvision_state_dict(tv_v1_state))
    assert model.cfg.backbone.norm_eps == 0.0  # the published v1 weights' FrozenBN eps
    assert model.cfg.box_head.score_thresh == 0.2
    assert model.cfg.category_names == COCO_91_NAMES and len(COCO_91_NAMES) == 91


def test_offline_error_names_the_url_and_the_local_alternatives(monkeypatch):
    def offline(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    url = PUBLISHED["maskrcnn_resnet50_fpn_v2_coco"].url
    with pytest.raises(WeightsUnavailableError) as info:
        from_pretrained("maskrcnn_resnet50_fpn_v2_coco")
    message = str(info.value)
    assert url in message and "local path" in message
    assert str(hub_cache_path(url)) in message
    assert isinstance(info.value, OSError)
    model = build_model(r18_fpn(3))
    with pytest.raises(WeightsUnavailableError, match="resnet18-f37072fd.pth"):
        load_imagenet_backbone(model, "resnet18_imagenet")


def _check_backbone(model, tv_state, *, c4: bool = False):
    ours = model.state_dict()
    for key, value in tv_state.items():
        new = torchvision_resnet_key(key)
        if new is None or new.endswith("num_batches_tracked"):
            continue
        if c4 and new.startswith("res5."):
            name = "roi_heads.shared_head." + new.removeprefix("res5.")
        else:
            name = ("backbone." if c4 else "backbone.bottom_up.") + new
        assert torch.equal(ours[name], value), key


def test_imagenet_backbone_from_local_file_fpn_and_c4(tmp_path, tv_resnet18_state):
    path = tmp_path / "resnet18.pth"
    torch.save(tv_resnet18_state, path)
    torch.manual_seed(0)
    model = build_model(r18_fpn(3))
    head_before = model.roi_heads.box_predictor.cls_score.weight.clone()
    assert load_imagenet_backbone(model, path) is model
    _check_backbone(model, tv_resnet18_state)
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, head_before)
    cfg = r50_c4(3)
    c4 = build_model(cfg.replace(backbone=dataclasses.replace(cfg.backbone, depth=18)))
    load_imagenet_backbone(c4, path)
    _check_backbone(c4, tv_resnet18_state, c4=True)


def test_imagenet_backbone_by_name_from_cache(tv_resnet18_state):
    cached = hub_cache_path(PUBLISHED["resnet18_imagenet"].url)
    cached.parent.mkdir(parents=True)
    torch.save(tv_resnet18_state, cached)
    model = load_imagenet_backbone(build_model(r18_fpn(3)), "resnet18_imagenet")
    _check_backbone(model, tv_resnet18_state)


def test_imagenet_backbone_of_the_wrong_depth_is_refused(tmp_path, tv_resnet18_state):
    path = tmp_path / "resnet18.pth"
    torch.save(tv_resnet18_state, path)
    model = build_model(preset("r50_fpn", 3))
    before = model.backbone.bottom_up.stem.conv1.conv.weight.clone()
    with pytest.raises(ValueError, match="cannot load torchvision ResNet weights"):
        load_imagenet_backbone(model, path)
    assert torch.equal(model.backbone.bottom_up.stem.conv1.conv.weight, before)


def test_native_file_names_and_errors(tmp_path, tv_resnet18_state):
    torch.manual_seed(0)
    model = build_model(r18_fpn(3).replace(category_names=("bg", "a", "b")))
    path = tmp_path / "ours.safetensors"
    save_model(model, path)
    loaded = from_pretrained(path)
    assert loaded.cfg == model.cfg and not loaded.training
    _assert_holds(loaded, model.state_dict())
    with pytest.raises(ValueError, match="no options"):
        from_pretrained(path, min_size=64)
    with pytest.raises(ValueError, match="maskrcnn_resnet50_fpn_coco"):
        from_pretrained("maskrcnn_resnet99")
    with pytest.raises(ValueError, match="load_imagenet_backbone"):
        from_pretrained("resnet50_imagenet")
    with pytest.raises(FileNotFoundError):
        from_pretrained(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="from_pretrained"):
        load_imagenet_backbone(model, "maskrcnn_resnet50_fpn_coco")
    resnet_path = tmp_path / "resnet18.pth"
    torch.save(tv_resnet18_state, resnet_path)
    with pytest.raises(ValueError, match="ImageNet ResNet"):
        from_pretrained(resnet_path)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="without its configuration"):
        from_pretrained(tmp_path / "bare.pth")


def _single_level(head: str, num_classes: int):
    cfg = r18_fpn(num_classes)
    anchors = dataclasses.replace(cfg.anchors, sizes=((32.0, 64.0, 128.0),))
    return cfg.replace(head=head, anchors=anchors)


def test_single_level_designs_take_a_torchvision_resnet(tmp_path, tv_resnet18_state):
    """c5 (res5, stride 32) takes the whole ResNet; c4_fc (res4 only) leaves layer4 out."""
    path = tmp_path / "resnet18.pth"
    torch.save(tv_resnet18_state, path)
    for head, stages in (("c5", 5), ("c4_fc", 4)):
        model = build_model(_single_level(head, 3))
        load_imagenet_backbone(model, path)
        ours = model.state_dict()
        checked = 0
        for key, value in tv_resnet18_state.items():
            new = torchvision_resnet_key(key)
            if new is None or (stages == 4 and key.startswith("layer4.")):
                continue
            if new.endswith("num_batches_tracked") and "backbone." + new not in ours:
                continue  # FrozenBN
            assert torch.equal(ours["backbone." + new], value), (head, key)
            checked += 1
        assert checked > 50
        assert not any(k.startswith("backbone.res5.") for k in ours) or stages == 5


def test_a_backbone_from_one_of_our_fpn_models(tmp_path):
    """Our FPN model file's backbone.bottom_up goes into an FPN, c5, c4_fc or C4 model's ResNet;
    nothing else of the source is taken."""
    torch.manual_seed(0)
    source = build_model(r18_fpn(3))
    randomize_(source, seed=1)
    path = save_model(source, tmp_path / "fpn.safetensors")
    bottom_up = {k: v for k, v in source.backbone.bottom_up.state_dict().items()}
    c4_cfg = r50_c4(3)
    c4_cfg = c4_cfg.replace(backbone=dataclasses.replace(c4_cfg.backbone, depth=18))
    targets = {
        "fpn": r18_fpn(5),
        "c5": _single_level("c5", 5),
        "c4_fc": _single_level("c4_fc", 5),
        "c4": c4_cfg,
    }
    for design, cfg in targets.items():
        torch.manual_seed(1)
        model = build_model(cfg)
        predictor = model.roi_heads.box_predictor.cls_score.weight.clone()
        load_imagenet_backbone(model, path)
        ours = model.state_dict()
        prefix = "backbone.bottom_up." if design == "fpn" else "backbone."
        loaded = 0
        for key, value in bottom_up.items():
            if design == "c4" and key.startswith("res5."):
                name = "roi_heads.shared_head." + key.removeprefix("res5.")
            elif design == "c4_fc" and key.startswith("res5."):
                assert prefix + key not in ours
                continue
            else:
                name = prefix + key
            if key.endswith("num_batches_tracked") and name not in ours:
                continue  # FrozenBN
            assert torch.equal(ours[name], value), (design, key)
            loaded += 1
        assert loaded > 50
        assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, predictor)


def test_an_fpn_model_whose_resnet_does_not_fit_is_refused(tmp_path):
    source = build_model(r18_fpn(3))
    path = save_model(source, tmp_path / "fpn.safetensors")
    model = build_model(preset("r50_fpn", 3))
    before = model.backbone.bottom_up.stem.conv1.conv.weight.clone()
    with pytest.raises(ValueError, match="does not fit the model's ResNet"):
        load_imagenet_backbone(model, path)
    assert torch.equal(model.backbone.bottom_up.stem.conv1.conv.weight, before)
