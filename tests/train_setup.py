"""Shared set-up of the training tests: a tiny shapes set, a tiny model config, subprocesses."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

import maskrcnn
from maskrcnn.data.shapes import ShapesFiles, write_shapes_dataset
from maskrcnn.train.assignments import listed
from maskrcnn.train.config import (
    CheckpointConfig,
    DataConfig,
    LogConfig,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
)
from maskrcnn.train.model_spec import ModelSpec

# r18_fpn shrunk for 96x128 images on a CPU: few proposals and RoIs, thin heads.
TINY_MODEL: dict[str, Any] = {
    "input.min_size": (80, 96),
    "input.max_size": 128,
    "fpn.out_channels": 64,
    "rpn.pre_nms_topk_train": 200,
    "rpn.post_nms_topk_train": 50,
    "rpn.pre_nms_topk_test": 200,
    "rpn.post_nms_topk_test": 50,
    "rpn.batch_size_per_image": 64,
    "box_head.batch_size_per_image": 32,
    "box_head.fc_dim": 256,
    "box_head.detections_per_image": 20,
    "mask_head.conv_dim": 64,
}


def assignments(overrides: Mapping[str, Any]) -> list[str]:
    """``"key=value"`` strings (JSON values) of overrides, as ``--set`` takes them."""
    return [f"{key}={_json_value(value)}" for key, value in overrides.items()]


def write_shapes(root: Path, *, train: int = 8, val: int = 4, seed: int = 0) -> ShapesFiles:
    """The shapes set at 96x128 (some images portrait)."""
    return write_shapes_dataset(root, train=train, val=val, seed=seed, image_size=(96, 128))


def tiny_config(
    files: ShapesFiles,
    out: Path,
    changes: Mapping[str, Any] | None = None,
    *,
    val: bool = False,
) -> TrainConfig:
    """A short CPU run of the tiny model on ``files`` (no progress bar, no workers).

    Args:
        changes: dotted fields to set on top (``{"schedule.max_iter": 60}``).
        val: evaluate on the validation split.
    """
    cfg = TrainConfig(
        data=DataConfig(
            train_ann=str(files.train_ann),
            train_images=str(files.image_dir),
            val_ann=str(files.val_ann) if val else None,
            val_images=str(files.image_dir) if val else None,
            batch_size=2,
            num_workers=0,
        ),
        out_dir=str(out),
        model=ModelSpec(preset="r18_fpn", overrides=TINY_MODEL),
        optim=OptimConfig(base_lr=0.01, base_batch_size=2),
        schedule=ScheduleConfig(max_iter=10, warmup_iters=3, lr_steps=(0.8,)),
        checkpoint=CheckpointConfig(period=5, keep=-1),
        log=LogConfig(period=1, progress=False),
        runtime=RuntimeConfig(device="cpu"),
    )
    return cfg.with_values(changes or {})


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread (the machine is shared; oversubscribed threads are very slow)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a training subprocess: one thread, this interpreter's packages, and
    the ``maskrcnn`` these tests import (first on PYTHONPATH, also for scripts run by path)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    root = str(Path(maskrcnn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def train_command(*args: str) -> list[str]:
    """``python -m maskrcnn.cli.train train ARGS`` with this interpreter."""
    return [sys.executable, "-m", "maskrcnn.cli.train", "train", *args]


def cli_args(cfg: TrainConfig) -> list[str]:
    """Command-line options that reproduce ``cfg`` (through ``--set`` and dotted
    ``--train-set section.field=value``)."""
    args = ["--train-ann", cfg.data.train_ann, "--train-images", cfg.data.train_images]
    args += ["--out", cfg.out_dir, "--preset", cfg.model.preset, "--no-progress"]
    for item in assignments(cfg.model.overrides):
        args += ["--set", item]
    defaults = TrainConfig(data=DataConfig(train_ann="x", train_images="x"))
    skip = {"data.train_ann", "data.train_images", "out_dir", "model.preset", "model.overrides"}
    for name, (_, value) in defaults.differences(cfg).items():
        if name not in skip | {"log.progress"}:
            args += ["--train-set", f"{name}={_json_value(value)}"]
    return args


def _json_value(value: Any) -> str:
    import json

    return json.dumps(listed(value))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
