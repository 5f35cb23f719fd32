"""A tiny Keypoint R-CNN run end to end: keypoint data -> training -> OKS evaluation -> predict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from train_setup import TINY_MODEL, one_thread, tiny_config

from maskrcnn.data.figures import FIGURE_KEYPOINTS, FIGURE_SKELETON, write_figures_dataset
from maskrcnn.evaluation.predict import predict_folder
from maskrcnn.train.trainer import train
from maskrcnn.weights.native import load_model

TINY_KEYPOINTS = {
    **TINY_MODEL,
    "mask_on": False,
    "keypoint_head.num_convs": 2,
    "keypoint_head.conv_dim": 32,
}


def test_keypoint_model_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    files = write_figures_dataset(tmp_path / "data", train=4, val=2, seed=0, image_size=(96, 128))
    cfg = tiny_config(
        files,
        tmp_path / "run",
        {"schedule.max_iter": 6, "checkpoint.period": 1000, "model.overrides": TINY_KEYPOINTS},
        val=True,
    )
    with one_thread():
        result = train(cfg)
    assert result.stop_reason == "max_iter" and result.skipped_steps == 0
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    train_rows = [r for r in rows if r["type"] == "train"]
    assert all(math.isfinite(r["loss_keypoint"]) and r["loss_keypoint"] > 0 for r in train_rows)
    assert not any("loss_mask" in r for r in train_rows)
    assert result.eval is not None and result.eval.keypoints is not None
    assert 0.0 <= result.eval.keypoints.ap <= 1.0
    evals = [r for r in rows if r["type"] == "eval"]
    assert evals and "keypoints_AP" in evals[-1]

    model = load_model(result.final_model)  # the keypoint head's names travel with the model
    kp_cfg = model.cfg.keypoint_head
    assert kp_cfg is not None and kp_cfg.keypoint_names == FIGURE_KEYPOINTS
    assert kp_cfg.skeleton == FIGURE_SKELETON and model.roi_heads.mask_head is None
    image = files.image_dir / "val_00000.png"
    instances = model.predict(image)
    assert instances.masks is None and instances.keypoints is not None
    assert instances.keypoints.shape == (len(instances), 11, 3)
    assert instances.keypoints_scores is not None
    assert instances.keypoints_scores.shape == (len(instances), 11)

    summary = predict_folder(model, [image], tmp_path / "pred", score_thresh=0.0, num_workers=0)
    record = json.loads(summary.json_path.read_text())[0]
    assert len(record["keypoints"]) == len(record["boxes"])
    assert all(len(k) == 11 for k in record["keypoints"])
    assert summary.overlays[0].stat().st_size > 0


def test_keypoint_and_mask_heads_together(tmp_path: Path) -> None:
    """With the mask head kept, both losses train and detections carry masks and keypoints."""
    from maskrcnn.config import override, r18_fpn
    from maskrcnn.data.coco import CocoDataset
    from maskrcnn.data.keypoints import keypoint_head_config
    from maskrcnn.modeling import build_model

    files = write_figures_dataset(tmp_path / "data", train=2, val=0, seed=2, image_size=(96, 128))
    ds = CocoDataset(files.train_ann, files.image_dir)
    assert ds.keypoints is not None
    cfg = r18_fpn(num_classes=2)
    for key, value in {k: v for k, v in TINY_KEYPOINTS.items() if k != "mask_on"}.items():
        cfg = override(cfg, key, value)
    cfg = cfg.replace(keypoint_head=keypoint_head_config(ds.keypoints, cfg.keypoint_head))
    with one_thread():
        torch.manual_seed(0)
        model = build_model(cfg)
        samples = [ds[0], ds[1]]
        losses = model.losses([s.image for s in samples], [s.gt for s in samples])
        assert {"loss_mask", "loss_keypoint"} <= set(losses)
        sum(losses.values()).backward()
        model.eval()
        with torch.no_grad():
            (out,) = model([samples[0].image])
    assert out["masks"].shape[1:] == (1, 96, 128)
    assert out["keypoints"].shape == (len(out["boxes"]), 11, 3)
