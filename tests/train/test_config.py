"""The sectioned training configuration: checks, round trips, dotted and old flat names."""

from __future__ import annotations

import json

import pytest

from maskrcnn.modeling.precision import PRECISIONS
from maskrcnn.train.config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LogConfig,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
)
from maskrcnn.train.config_compat import FLAT_FIELDS, sections_from_flat
from maskrcnn.train.model_spec import ModelSpec

# A whole train_config.json as the flat TrainConfig of earlier versions wrote it.
OLD_FLAT = {
    "train_ann": "d/train.json",
    "train_images": "d/images",
    "val_ann": "d/val.json",
    "val_images": "d/images",
    "out_dir": "runs/old",
    "preset": "r18_fpn",
    "model_overrides": ["input.min_size=[192]", "rpn.nms_thresh=0.6", "backbone.norm=bn"],
    "batch_size": 8,
    "max_iter": 750,
    "max_minutes": 10.5,
    "base_lr": 0.0005,
    "base_batch_size": 8,
    "optimizer": "adamw",
    "momentum": 0.9,
    "weight_decay": 0.05,
    "no_decay_norm_bias": False,
    "warmup_iters": 50,
    "warmup_factor": 0.001,
    "lr_steps": [0.8, 0.95],
    "gamma": 0.1,
    "clip_grad_norm": None,
    "amp": "none",
    "checkpoint_period": 100,
    "keep_checkpoints": 2,
    "eval_period": 250,
    "eval_max_images": None,
    "log_period": 20,
    "seed": 1,
    "num_workers": 1,
    "flip_prob": 0.5,
    "skip_bad_images": False,
    "imagenet": None,
    "device": "auto",
    "sync_bn": False,
    "max_nonfinite": 10,
    "progress": True,
}

NEW = TrainConfig(
    data=DataConfig(
        "d/train.json", "d/images", "d/val.json", "d/images", batch_size=8, num_workers=1
    ),
    out_dir="runs/old",
    model=ModelSpec(
        "r18_fpn", {"input.min_size": (192,), "rpn.nms_thresh": 0.6, "backbone.norm": "bn"}
    ),
    optim=OptimConfig(kind="adamw", base_lr=0.0005, base_batch_size=8, weight_decay=0.05),
    schedule=ScheduleConfig(max_iter=750, warmup_iters=50, lr_steps=(0.8, 0.95)),
    checkpoint=CheckpointConfig(period=100),
    eval=EvalConfig(period=250),
    log=LogConfig(period=20),
    runtime=RuntimeConfig(precision="fp32", seed=1, max_minutes=10.5),
)


def test_sections_round_trip_through_json_and_the_flat_layout_still_reads() -> None:
    data = json.loads(json.dumps(NEW.to_dict()))
    assert set(data) == {
        "data",
        "out_dir",
        "model",
        "optim",
        "schedule",
        "checkpoint",
        "eval",
        "log",
        "runtime",
    }
    assert data["model"]["overrides"]["input.min_size"] == [192]
    assert TrainConfig.from_dict(data) == NEW
    assert TrainConfig.from_dict(OLD_FLAT) == NEW  # existing run folders resume
    assert TrainConfig.from_dict({**OLD_FLAT, "amp": "bf16"}).runtime.precision == "bf16"
    assert set(FLAT_FIELDS) == set(OLD_FLAT)  # every old field has a place
    partial = TrainConfig.from_dict({"train_ann": "a", "train_images": "b", "max_iter": 3})
    assert partial.schedule.max_iter == 3 and partial.optim == OptimConfig()
    assert sections_from_flat({"amp": "none", "max_iter": 3}) == {
        "runtime": {"precision": "fp32"},
        "schedule": {"max_iter": 3},
    }


def test_dotted_paths_and_old_flat_names_set_fields() -> None:
    cfg = NEW.with_assignments(
        ["optim.base_lr=0.01", "keep_checkpoints=-1", "amp=auto", "model.preset=r50_fpn"]
        + ['model.overrides={"fpn.out_channels": 64}', "val_ann=null", "val_images=null"]
    )
    assert cfg.optim.base_lr == 0.01 and cfg.checkpoint.keep == -1
    assert cfg.runtime.precision == "auto" and cfg.model.preset == "r50_fpn"
    assert cfg.model.overrides == {"fpn.out_channels": 64}
    assert cfg.data.val_ann is None and cfg.data.val_images is None  # both at once
    assert NEW.with_assignments(['model_overrides=["rpn.nms_thresh=0.5"]']).model.overrides == {
        "rpn.nms_thresh": 0.5
    }
    assert cfg.differences(NEW)["optim.base_lr"] == (0.01, 0.0005)
    assert NEW.with_values({"out_dir": "x"}).out_dir == "x"
    assert NEW.lr == pytest.approx(0.0005) and NEW.schedule.milestones() == (600, 712)
    for precision in PRECISIONS:
        assert NEW.with_values({"runtime.precision": precision}).runtime.precision == precision


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("optim.base_lr=-1", r"TrainConfig\.optim\.base_lr: must be a non-negative number"),
        ("runtime.precision=none", r"TrainConfig\.runtime\.precision: must be one of"),
        ("amp=fp32", r"TrainConfig amp: must be one of \['none', 'auto', 'bf16', 'fp16'\]"),
        ("schedule.max_iter=1.5", r"TrainConfig\.schedule\.max_iter: must be a positive integer"),
        ("eval.max_images=0", r"TrainConfig\.eval\.max_images: must be a positive integer or"),
        ("log.progress=1", r"TrainConfig\.log\.progress: must be true or false"),
        ("runtime.device=tpu", r"TrainConfig\.runtime\.device: must be 'auto'"),
        ("data.flip_prob=2", r"TrainConfig\.data\.flip_prob: must be in \[0, 1\]"),
        ("optim.kind=lamb", r"TrainConfig\.optim\.kind: the optimizer must be one of"),
        ("schedule.lr_steps=0.5", r"TrainConfig\.schedule\.lr_steps: must be a list"),
        ("optim.nothing=1", r"train setting 'optim.nothing=1': unknown field 'optim.nothing'"),
        ("nothing.base_lr=1", r"unknown field 'nothing.base_lr'"),
        ("model.overrides=3", r"TrainConfig\.model\.overrides: expected a mapping"),
        ('model_overrides=["x"]', r"model override 'x': expected key=value"),
        ('model.overrides={"num_classes": 3}', "set from the dataset"),
    ],
)
def test_bad_values_name_the_field(item: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NEW.with_assignments([item])


def test_bad_mappings_name_the_section() -> None:
    data = NEW.to_dict()
    with pytest.raises(ValueError, match=r"TrainConfig\.optim: unknown field\(s\) \['x'\]"):
        TrainConfig.from_dict({**data, "optim": {**data["optim"], "x": 1}})
    with pytest.raises(ValueError, match=r"TrainConfig\.data: .*train_images"):
        TrainConfig.from_dict({**data, "data": {"train_ann": "a"}})
    with pytest.raises(ValueError, match="no data section"):
        TrainConfig.from_dict({"optim": data["optim"]})
    with pytest.raises(ValueError, match=r"TrainConfig\.schedule: expected a mapping"):
        TrainConfig.from_dict({**data, "schedule": 3})
    with pytest.raises(ValueError, match=r"TrainConfig\.optim: expected OptimConfig, got dict"):
        TrainConfig(data=NEW.data, optim={"kind": "sgd"})  # type: ignore[arg-type]
