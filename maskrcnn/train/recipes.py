"""Named training recipes: a model, an optimiser, a schedule, a batch size and a precision.

``maskrcnn train --recipe NAME`` starts from one (options given on the command line or in a
``--config`` file change it); ``maskrcnn recipes`` lists them and ``maskrcnn recipes NAME``
prints one in full. :data:`RECIPES` is plain data, name -> :class:`Recipe`:

- ``cpu-small``: the demo's: a ResNet-18-FPN slimmed for ~200x250 images and a CPU, from
  scratch with trainable BatchNorm, AdamW 5e-4 at batch 8, 750 steps, bf16 autocast. Give it
  a time budget (``--max-minutes``) and the steps fit the machine.
- ``1x`` and ``3x``: the paper's R50-FPN schedules as detectron2 runs them (90k / 270k steps
  at batch 16, SGD 0.02, momentum 0.9, weight decay 1e-4, decay x0.1 at 60k, 80k / 210k,
  250k, 1000 linear warm-up steps from 0.001), from ImageNet weights, in fp32.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from maskrcnn.modeling.precision import Precision
from maskrcnn.train.config import OptimConfig, ScheduleConfig, TrainConfig
from maskrcnn.train.model_spec import ModelSpec

# A ResNet-18-FPN slimmed for 192x256 images and a CPU: trainable BatchNorm (no ImageNet
# weights offline, so the backbone learns from scratch), 128-channel FPN and mask head,
# anchors from 16 to 256 pixels, fewer sampled anchors, proposals and RoIs per image.
CPU_SMALL_MODEL: dict[str, Any] = {
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
class Recipe:
    """The training settings a recipe fixes (everything else keeps its default).

    Attributes:
        name: what ``--recipe`` takes.
        summary: one line for ``maskrcnn recipes``.
        model: the model (preset, overrides, ImageNet initialisation).
        optim: the optimiser.
        schedule: the schedule.
        batch_size: images per step (``data.batch_size``).
        precision: ``runtime.precision``.
    """

    name: str
    summary: str
    model: ModelSpec
    optim: OptimConfig
    schedule: ScheduleConfig
    batch_size: int
    precision: Precision = "fp32"

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with the recipe's sections and fields."""
        return cfg.replace(
            model=self.model,
            optim=self.optim,
            schedule=self.schedule,
            data=dataclasses.replace(cfg.data, batch_size=self.batch_size),
            runtime=dataclasses.replace(cfg.runtime, precision=self.precision),
        )

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a partial ``TrainConfig`` mapping (what ``--config`` reads)."""
        full = self.apply(TrainConfig.from_dict({"data": {"train_ann": "", "train_images": ""}}))
        out = full.to_dict()
        return {
            "model": out["model"],
            "optim": out["optim"],
            "schedule": out["schedule"],
            "data": {"batch_size": self.batch_size},
            "runtime": {"precision": self.precision},
        }


def _paper(name: str, iters: int, steps: tuple[int, int]) -> Recipe:
    return Recipe(
        name=name,
        summary=(
            f"the paper's R50-FPN {name} schedule: {iters // 1000}k steps at batch 16, SGD 0.02, "
            f"decay at {steps[0] // 1000}k and {steps[1] // 1000}k, ImageNet weights, fp32"
        ),
        model=ModelSpec(preset="r50_fpn", imagenet="resnet50_imagenet"),
        optim=OptimConfig(
            kind="sgd", base_lr=0.02, base_batch_size=16, momentum=0.9, weight_decay=1e-4
        ),
        schedule=ScheduleConfig(
            max_iter=iters,
            warmup_iters=1000,
            warmup_factor=0.001,
            lr_steps=(steps[0] / iters, steps[1] / iters),
            gamma=0.1,
        ),
        batch_size=16,
        precision="fp32",
    )


CPU_SMALL = Recipe(
    name="cpu-small",
    summary=(
        "the demo's: ResNet-18-FPN slimmed for ~200x250 images, from scratch, AdamW 5e-4 at "
        "batch 8, 750 steps, bf16; fits a --max-minutes budget"
    ),
    model=ModelSpec(preset="r18_fpn", overrides=CPU_SMALL_MODEL),
    optim=OptimConfig(kind="adamw", base_lr=5e-4, base_batch_size=8, weight_decay=0.05),
    schedule=ScheduleConfig(max_iter=750, warmup_iters=50, lr_steps=(0.8, 0.95)),
    batch_size=8,
    precision="bf16",  # autocast; fp32 (with a warning) on CPUs that emulate bf16
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        CPU_SMALL,
        _paper("1x", 90_000, (60_000, 80_000)),
        _paper("3x", 270_000, (210_000, 250_000)),
    )
}


def recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        ValueError: no such recipe (the message lists them).
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {list(RECIPES)}")
    return RECIPES[name]
