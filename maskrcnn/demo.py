"""The one-command demo: make data, train, evaluate, and draw, on a 2-core CPU in ~15 minutes.

``maskrcnn demo --out DIR`` writes a synthetic shapes set (real PNG files and COCO JSON, so it
goes through the same path as user data), trains a CPU-sized Mask R-CNN on it from scratch
within a time budget (the ``cpu-small`` recipe, its steps fitted to the budget on this
machine), evaluates box and mask AP with COCOeval on the validation split, and
writes a predictions grid (ground truth beside predictions), the loss and AP curves, and the
RoI-operator explainer figure.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.shapes import write_shapes_dataset
from maskrcnn.train.config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    RuntimeConfig,
    TrainConfig,
)
from maskrcnn.train.recipes import CPU_SMALL, CPU_SMALL_MODEL, Recipe
from maskrcnn.train.trainer import train
from maskrcnn.viz.draw import predictions_grid
from maskrcnn.weights.native import load_model

# The demo's model and training settings are the ``cpu-small`` recipe
# (:mod:`maskrcnn.train.recipes`); its model overrides, under their older name:
DEMO_MODEL_OVERRIDES: dict[str, Any] = CPU_SMALL_MODEL


@dataclass(frozen=True)
class DemoSettings:
    """The demo's data size, recipe and time budget.

    The recipe's step count is the most the demo takes: with the budget, the steps are fitted
    to the machine (``schedule.fit_to_budget``), so a slower machine takes fewer steps and
    still warms up, decays and evaluates inside the budget.
    """

    train_images: int = 600
    val_images: int = 100
    seed: int = 0
    recipe: Recipe = CPU_SMALL
    max_minutes: float = 10.5
    eval_period: int = 250  # AP points for the curves (~7 s each); the last step always evaluates
    workers: int = 1
    grid_images: int = 6

    @classmethod
    def for_budget(cls, minutes: float) -> DemoSettings:
        """The default settings with the budget, and the most steps, scaled to ``minutes``.

        The most steps scale with the budget at the default rate (750 steps per 10.5 minutes,
        what this project's 2-core machine runs); the budget fits them to the machine.
        """
        if minutes <= 0:
            raise ValueError(f"the demo's budget must be positive, got {minutes} minutes")
        default = cls()
        schedule = default.recipe.schedule
        steps = max(
            schedule.warmup_iters + 1, round(schedule.max_iter * minutes / default.max_minutes)
        )
        recipe = dataclasses.replace(
            default.recipe, schedule=dataclasses.replace(schedule, max_iter=steps)
        )
        return cls(max_minutes=minutes, recipe=recipe)


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
    base = TrainConfig(
        data=DataConfig(
            train_ann=str(data_dir / "train.json"),
            train_images=str(data_dir / "images"),
            val_ann=str(data_dir / "val.json"),
            val_images=str(data_dir / "images"),
            num_workers=settings.workers,
        ),
        out_dir=str(run_dir),
        checkpoint=CheckpointConfig(period=100),
        eval=EvalConfig(period=settings.eval_period),
        runtime=RuntimeConfig(seed=settings.seed, max_minutes=settings.max_minutes),
    )
    cfg = settings.recipe.apply(base)
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
