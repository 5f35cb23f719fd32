"""detectron2 checkpoints: restricted unpickling, key and class-row mapping, configuration."""

from __future__ import annotations

import collections
import os
import pickle
import re

import numpy as np
import pytest
import torch

from maskrcnn import build_model, from_detectron2, from_pretrained
from maskrcnn.config import detectron2_config
from maskrcnn.data.coco_names import COCO_80_NAMES, COCO_81_NAMES
from maskrcnn.modeling.randomize import randomize_
from maskrcnn.weights.detectron2 import load_detectron2_pkl

SMALL = dict(min_size=128, max_size=160, score_thresh=0.0, detections_per_image=20)
CLS, BOX = "roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"
MASK = "roi_heads.mask_head.predictor"


def d2_name(key: str) -> str:
    """detectron2's name for one of our keys (written independently of the converter)."""
    rules = [
        (r"(backbone\.bottom_up\..*\.(?:conv\d|shortcut))\.conv\.weight",
         lambda m: f"{m[1]}.weight"),
        (r"backbone\.fpn\.(lateral|output)_convs\.(\d)\.conv\.(\w+)",
         lambda m: f"backbone.fpn_{m[1]}{int(m[2]) + 2}.{m[3]}"),
        (r"rpn\.head\.convs\.0\.conv\.(\w+)", lambda m: f"proposal_generator.rpn_head.conv.{m[1]}"),
        (r"rpn\.head\.(\w+\.\w+)", lambda m: f"proposal_generator.rpn_head.{m[1]}"),
        (r"roi_heads\.box_head\.fcs\.(\d)\.(\w+)",
         lambda m: f"roi_heads.box_head.fc{int(m[1]) + 1}.{m[2]}"),
        (r"roi_heads\.mask_head\.convs\.(\d)\.conv\.(\w+)",
         lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}"),
    ]  # fmt: skip
    for pattern, rename in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return rename(match)
    return key  # norms, predictors, deconv: the same names


def d2_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Our weights as a detectron2 model-zoo dict: bg row last in cls_score, none elsewhere."""
    out = {}
    for key, value in model.state_dict().items():
        value = value.numpy().copy()
        if key.startswith(CLS):
            value = np.concatenate([value[1:], value[:1]])
        elif key.startswith(BOX):
            value = value[4:]
        elif key.startswith(MASK):
            value = value[1:]
        out[d2_name(key)] = value
    return out


@pytest.fixture(scope="module")
def d2_checkpoint(tmp_path_factory):
    """(source model, {d2 name: array}, path of the pickled model-zoo file)."""
    torch.manual_seed(0)
    source = randomize_(build_model(detectron2_config(80, **SMALL)), seed=3).eval()
    with torch.no_grad():  # background rows that detectron2 does not have
        for key in (f"{BOX}.weight", f"{BOX}.bias"):
            source.get_parameter(key)[:4] = 0
        for key in (f"{MASK}.weight", f"{MASK}.bias"):
            source.get_parameter(key)[:1] = 0
    arrays = d2_arrays(source)
    path = tmp_path_factory.mktemp("d2") / "model_final.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, handle, protocol=3)
    return source, arrays, path


def test_every_weight_comes_from_its_source_array(d2_checkpoint):
    source, arrays, path = d2_checkpoint
    model = from_detectron2(path, **SMALL)
    ours = model.state_dict()
    assert len(arrays) == len(ours)
    for key, value in ours.items():
        assert torch.equal(value, source.state_dict()[key]), key
    # The class rows, explicitly: background is d2's last cls_score row and has no box/mask rows.
    cls_w, d2_cls = ours[f"{CLS}.weight"], arrays["roi_heads.box_predictor.cls_score.weight"]
    assert cls_w.shape[0] == 81 and d2_cls.shape[0] == 81
    assert np.array_equal(cls_w[0].numpy(), d2_cls[80])
    for k in (1, 2, 40, 80):
        assert np.array_equal(cls_w[k].numpy(), d2_cls[k - 1])
    assert np.array_equal(ours[f"{CLS}.bias"][0].numpy(), arrays[f"{CLS}.bias"][80])
    box_w, d2_box = ours[f"{BOX}.weight"], arrays[f"{BOX}.weight"]
    assert d2_box.shape[0] == 320 and box_w.shape[0] == 324
    assert not box_w[:4].any() and not ours[f"{BOX}.bias"][:4].any()
    assert np.array_equal(box_w[4:8].numpy(), d2_box[0:4])
    assert np.array_equal(box_w[4 * 80 : 4 * 81].numpy(), d2_box[4 * 79 : 4 * 80])
    mask_w, d2_mask = ours[f"{MASK}.weight"], arrays[f"{MASK}.weight"]
    assert d2_mask.shape[0] == 80 and mask_w.shape[0] == 81 and not mask_w[0].any()
    assert np.array_equal(mask_w[5].numpy(), d2_mask[4])
    stem = arrays["backbone.bottom_up.stem.conv1.weight"]
    assert np.array_equal(ours["backbone.bottom_up.stem.conv1.conv.weight"].numpy(), stem)
    lateral = arrays["backbone.fpn_lateral3.weight"]
    assert np.array_equal(ours["backbone.fpn.lateral_convs.1.conv.weight"].numpy(), lateral)


def test_converted_model_runs_like_the_source(d2_checkpoint):
    source, _, path = d2_checkpoint
    model = from_detectron2(path, category_names=COCO_81_NAMES, **SMALL)
    assert not model.training
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, ref = model([image])[0], source([image])[0]
    assert len(out["boxes"]) > 0 and out["masks"].shape[-2:] == (128, 160)
    for key in ("boxes", "labels", "scores", "masks"):
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=0)
    assert model.predict(image).category_names[0] in COCO_81_NAMES


def test_from_pretrained_recognises_a_detectron2_pkl(d2_checkpoint):
    source, _, path = d2_checkpoint
    model = from_pretrained(path, **SMALL)
    assert model.cfg.category_names == COCO_81_NAMES
    assert model.cfg.category_names[1:] == COCO_80_NAMES
    weight = "roi_heads.mask_head.convs.3.conv.weight"
    assert torch.equal(model.state_dict()[weight], source.state_dict()[weight])


def test_detectron2_config():
    cfg = detectron2_config()
    assert cfg.num_classes == 81
    assert (cfg.input.pixel_scale, cfg.input.channel_order) == (255.0, "BGR")
    assert cfg.input.pixel_mean == (103.530, 116.280, 123.675)
    assert cfg.input.pixel_std == (1.0, 1.0, 1.0) and cfg.input.min_size[-1] == 800
    assert cfg.backbone.stride_in_1x1 and cfg.backbone.norm_eps == 1e-5
    assert cfg.backbone.norm == "frozen_bn"
    for pooler, size in ((cfg.box_head.pooler, 7), (cfg.mask_head.pooler, 14)):
        assert (pooler.output_size, pooler.sampling_ratio, pooler.aligned) == (size, 0, True)
        assert pooler.level_eps == 1e-8
    assert not cfg.anchors.round_base_anchors and not cfg.anchors.strides_from_grid
    assert cfg.rpn.post_nms_topk_train == 1000 and cfg.rpn.post_nms_topk_test == 1000
    box = cfg.box_head
    assert (box.score_thresh, box.nms_thresh, box.detections_per_image) == (0.05, 0.5, 100)
    assert cfg.mask_head.paste == "grid_sample" and cfg.mask_head.threshold == 0.5


def _dump(tmp_path, obj, name="weights.pkl", protocol=None):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_containers_and_arrays_unpickle(tmp_path, protocol):
    arrays = collections.OrderedDict(
        a=np.arange(6, dtype=np.float32).reshape(2, 3),
        b=np.asarray([1, 2], dtype=">i8"),  # big-endian survives
        c=np.zeros((0, 4), dtype=np.float64),
    )
    extra = {
        "__author__": "x",
        "matching_heuristics": True,
        "meta": [np.float32(1.5), {1, 2}, b"", b"ab"],
    }
    path = _dump(tmp_path, {"model": arrays, **extra}, protocol=protocol)
    loaded = load_detectron2_pkl(path)
    assert list(loaded) == ["a", "b", "c"]
    for key, value in arrays.items():
        assert np.array_equal(loaded[key], value)
        assert loaded[key].dtype.newbyteorder("=") == value.dtype.newbyteorder("=")
    bare = load_detectron2_pkl(_dump(tmp_path, dict(arrays), "bare.pkl", protocol))
    assert list(bare) == ["a", "b", "c"]


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class _WriteFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("payload", [_System, _Eval, _WriteFile])
def test_malicious_pickle_is_refused_before_running(tmp_path, payload):
    marker = tmp_path / "pwned_marker"
    weights = {"model": {"w": np.ones(3, np.float32), "evil": payload(marker)}}
    path = _dump(tmp_path, weights, "evil.pkl")
    with pytest.raises(ValueError, match=r"evil\.pkl.*refusing to unpickle global"):
        load_detectron2_pkl(path)
    with pytest.raises(ValueError, match="refusing"):
        from_detectron2(path)
    assert not marker.exists()
    control = tmp_path / "control_marker"  # the payload is live: a plain unpickler runs it
    pickle.loads(pickle.dumps(payload(control)))
    assert control.exists()


def test_refused_global_is_named(tmp_path):
    path = _dump(tmp_path, {"model": {"evil": _System(tmp_path / "m")}}, "e.pkl")
    with pytest.raises(ValueError, match=rf"{os.system.__module__}\.system"):
        load_detectron2_pkl(path)


def test_bad_layouts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Detectron1"):
        load_detectron2_pkl(_dump(tmp_path, {"blobs": {"conv1_w": np.ones(2)}}, "d1.pkl"))
    objects = np.array([1, "a"], dtype=object)
    with pytest.raises(ValueError, match="non-numeric"):
        load_detectron2_pkl(_dump(tmp_path, {"model": {"x": objects}}, "obj.pkl"))
    with pytest.raises(ValueError, match="not an array"):
        load_detectron2_pkl(_dump(tmp_path, {"model": {"x": [1.0, 2.0]}}, "list.pkl"))
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x05not a pickle")
    with pytest.raises(ValueError, match="junk.pkl"):
        load_detectron2_pkl(tmp_path / "junk.pkl")
    with pytest.raises(FileNotFoundError):
        load_detectron2_pkl(tmp_path / "missing.pkl")


def test_unknown_keys_are_named_and_non_weights_ignored(d2_checkpoint, tmp_path):
    _, arrays, _ = d2_checkpoint
    extras = {
        "pixel_mean": np.zeros((3, 1, 1), np.float32),
        "proposal_generator.anchor_generator.cell_anchors.0": np.zeros((3, 4), np.float32),
    }
    model = from_detectron2({**arrays, **extras}, **SMALL)
    assert model.cfg.num_classes == 81
    bogus = {**arrays, "roi_heads.box_head.mystery.weight": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match=r"roi_heads\.box_head\.mystery\.weight"):
        from_detectron2(bogus)
    with pytest.raises(ValueError, match="contradicts"):
        from_detectron2(arrays, num_classes=20)
