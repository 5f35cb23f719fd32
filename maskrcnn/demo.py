"""The one-command demo: make data, train, evaluate, and draw, on a 2-core CPU in ~15 minutes.

``maskrcnn demo --out DIR`` writes a synthetic shapes set (real PNG files and COCO JSON, so it
goes through the same path as user data), trains a CPU-sized Mask R-CNN on it from scratch
within a time budget, evaluates box and mask AP with COCOeval on the validation split, and
writes a predictions grid (ground truth beside predictions), the loss and AP curves, and the
RoI-operator explainer figure.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.shapes import write_shapes_dataset
from maskrcnn.modeling.precision import Precision
from maskrcnn.train.config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    OptimConfig,
    OptimizerKind,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
)
from maskrcnn.train.model_spec import ModelSpec
from maskrcnn.train.trainer import train
from maskrcnn.viz.draw import predictions_grid
from maskrcnn.weights.native import load_model

# A ResNet-18-FPN slimmed for 192x256 images and a CPU: trainable BatchNorm (no ImageNet
# weights offline, so the backbone learns from scratch), 128-channel FPN and mask head,
# anchors from 16 to 256 pixels, fewer sampled anchors, proposals and RoIs per image.
DEMO_MODEL_OVERRIDES: dict[str, Any] = {
    "backbone.norm": "bn",
    "backbone.freeze_at": 0,
    "fpn.out_channels": 128,
    "box_head.fc_dim": 512,
    "mask_head.conv_dim": 128,
    "input.min_size": (192,),
    "input.max_size": 256,
    "anchors.sizes": ((16,), (32,), (64,), (128,), (256,)),
    "rpn.batch_size_per_image": 128,
    "rpn.pre_nms_topk_train": 500,
    "rpn.post_nms_topk_train": 500,
    "rpn.pre_nms_topk_test": 500,
    "rpn.post_nms_topk_test": 300,
    "box_head.batch_size_per_image": 128,
}


@dataclass(frozen=True)
class DemoSettings:
    """The demo's data size and training budget."""

    train_images: int = 600
    val_images: int = 100
    seed: int = 0
    batch_size: int = 8
    optimizer: OptimizerKind = "adamw"  # from scratch in minutes, AdamW learns ~2x faster than SGD
    lr: float = 5e-4
    weight_decay: float = 0.05
    precision: Precision = "bf16"  # autocast; resolve_precision falls back to fp32 (warning)
    # on CPUs that emulate bf16 (no AVX-512 BF16 / AMX)
    max_iter: int = 750
    max_minutes: float = 10.5
    warmup_iters: int = 50
    lr_steps: tuple[float, ...] = (0.8, 0.95)  # decay x0.1 at these fractions of max_iter
    eval_period: int = 250  # AP points for the curves (~7 s each); the last step always evaluates
    workers: int = 1
    grid_images: int = 6

    @classmethod
    def for_budget(cls, minutes: float) -> DemoSettings:
        """The default settings with the schedule stretched (or shrunk) to ``minutes``.

        Steps scale with the budget at the default rate (750 steps per 10.5 minutes, what
        this project's 2-core machine runs), so the learning-rate decay still happens.
        """
        if minutes <= 0:
            raise ValueError(f"the demo's budget must be positive, got {minutes} minutes")
        default = cls()
        steps = max(
            default.warmup_iters + 1, round(default.max_iter * minutes / default.max_minutes)
        )
        return cls(max_minutes=minutes, max_iter=steps)


@dataclass
class DemoResult:
    """What the demo produced."""

    out_dir: Path
    box_ap: float
    mask_ap: float
    iterations: int
    minutes: float
    model: Path
    grid: Path
    curves: Path


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings()) -> DemoResult:
    """Runs the whole demo into ``out``; returns the AP figures and the files written."""
    out = Path(out)
    start = time.perf_counter()
    data_dir = out / "shapes"
    if not (data_dir / "train.json").is_file():
        write_shapes_dataset(
            data_dir, train=settings.train_images, val=settings.val_images, seed=settings.seed
        )
    print(f"data: {settings.train_images} train / {settings.val_images} val images in {data_dir}")
    run_dir = out / "run"
    cfg = TrainConfig(
        data=DataConfig(
            train_ann=str(data_dir / "train.json"),
            train_images=str(data_dir / "images"),
            val_ann=str(data_dir / "val.json"),
            val_images=str(data_dir / "images"),
            batch_size=settings.batch_size,
            num_workers=settings.workers,
        ),
        out_dir=str(run_dir),
        model=ModelSpec(preset="r18_fpn", overrides=DEMO_MODEL_OVERRIDES),
        optim=OptimConfig(
            kind=settings.optimizer,
            base_lr=settings.lr,
            base_batch_size=settings.batch_size,
            weight_decay=settings.weight_decay,
        ),
        schedule=ScheduleConfig(
            max_iter=settings.max_iter,
            warmup_iters=settings.warmup_iters,
            lr_steps=settings.lr_steps,
        ),
        checkpoint=CheckpointConfig(period=100),
        eval=EvalConfig(period=settings.eval_period),
        runtime=RuntimeConfig(
            precision=settings.precision,
            seed=settings.seed,
            max_minutes=settings.max_minutes,
        ),
    )
    if (run_dir / "model_final.safetensors").is_file():
        shutil.rmtree(run_dir)  # a finished demo run: train afresh
    resume = (run_dir / "last.ckpt").is_file()  # an interrupted one: carry on
    result = train(cfg, resume=resume)
    if result.final_model is None or result.eval is None:
        raise RuntimeError(f"demo training stopped early ({result.stop_reason}); rerun to resume")

    model = load_model(result.final_model)
    val = CocoDataset(data_dir / "val.json", data_dir / "images")
    picks = range(min(settings.grid_images, len(val)))
    samples = [val[i] for i in picks]
    with torch.inference_mode():
        preds = [model.predict(s.image) for s in samples]
    grid = predictions_grid(
        [s.image for s in samples], [s.gt for s in samples], preds, out / "predictions.png"
    )
    minutes = (time.perf_counter() - start) / 60
    return DemoResult(
        out_dir=out,
        box_ap=result.eval.bbox.ap,
        mask_ap=result.eval.segm.ap,
        iterations=result.iteration,
        minutes=minutes,
        model=result.final_model,
        grid=grid,
        curves=run_dir / "curves.png",
    )
