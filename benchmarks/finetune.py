"""Does starting from a pretrained model pay? Pretrain on one shapes set, fine-tune on another.

    python benchmarks/finetune.py --out runs/finetune_bench          # ~12-15 min on 2 cores
    python benchmarks/finetune.py --out /tmp/ft --tiny               # seconds: a smoke test

Set A: circle, square, triangle, star (vivid colours). Set B: circle, square, hexagon, cross
(pastel colours), so two classes share names with A and two do not. A demo-sized ResNet-18
model (``maskrcnn.demo.DEMO_MODEL_OVERRIDES``) is pretrained on A, then trained on B three ways:
from scratch, ``--init`` with fresh heads (``--init-map`` sends every class to fresh), and
``--init`` with rows carried over by name. Each is run at equal steps and at equal minutes;
the script prints a markdown table of box and mask AP on B's validation split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from maskrcnn.data.shapes import write_shapes_dataset
from maskrcnn.demo import DEMO_MODEL_OVERRIDES
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
from maskrcnn.train.model_spec import ModelSpec
from maskrcnn.train.trainer import train

CLASSES_A = ("circle", "square", "triangle", "star")
CLASSES_B = ("circle", "square", "hexagon", "cross")


def _config(args: argparse.Namespace, files, out: Path, spec: ModelSpec, steps: int,
            minutes: float | None) -> TrainConfig:  # fmt: skip
    return TrainConfig(
        data=DataConfig(
            train_ann=str(files.train_ann),
            train_images=str(files.image_dir),
            val_ann=str(files.val_ann),
            val_images=str(files.image_dir),
            batch_size=args.batch_size,
            num_workers=args.workers,
        ),
        out_dir=str(out),
        model=spec,
        optim=OptimConfig(
            kind="adamw", base_lr=args.lr, base_batch_size=args.batch_size, weight_decay=0.05
        ),  # fmt: skip
        schedule=ScheduleConfig(
            max_iter=steps, warmup_iters=min(50, steps // 5), lr_steps=(0.8, 0.95)
        ),  # fmt: skip
        checkpoint=CheckpointConfig(period=max(steps, 1), keep=0),
        eval=EvalConfig(period=0),
        log=LogConfig(period=10, progress=False),
        runtime=RuntimeConfig(
            device="cpu", precision=args.precision, seed=args.seed, max_minutes=minutes
        ),  # fmt: skip
    )


def _ap(result) -> tuple[float, float]:
    ev = result.eval
    if ev is None:
        return float("nan"), float("nan")
    flat = ev.flat()
    return flat["bbox_AP"] * 100, flat["segm_AP"] * 100


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--val-images", type=int, default=80)
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--pretrain-minutes", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps (equal steps)")
    p.add_argument("--minutes", type=float, default=1.5, help="fine-tuning budget (equal time)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="a few images and steps (smoke test)")
    args = p.parse_args(argv)
    if args.tiny:
        args.train_images, args.val_images, args.batch_size, args.workers = 6, 3, 2, 0
        args.pretrain_steps, args.steps, args.pretrain_minutes, args.minutes = 3, 3, 0.2, 0.05
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    size = (96, 128) if args.tiny else (192, 256)
    set_a = write_shapes_dataset(out / "data_a", train=args.train_images, val=args.val_images,
                                 seed=args.seed, image_size=size, classes=CLASSES_A)  # fmt: skip
    set_b = write_shapes_dataset(out / "data_b", train=args.train_images, val=args.val_images,
                                 seed=args.seed + 1, image_size=size, classes=CLASSES_B,
                                 colours="pastel")  # fmt: skip
    overrides = dict(DEMO_MODEL_OVERRIDES)
    if args.tiny:
        overrides.update({"input.min_size": (96,), "input.max_size": 128})
    scratch = ModelSpec(preset="r18_fpn", overrides=overrides)
    pre = train(_config(args, set_a, out / "pretrain", scratch, args.pretrain_steps,
                        args.pretrain_minutes))  # fmt: skip
    assert pre.final_model is not None
    source = str(pre.final_model)
    fresh_map = tuple((name, "") for name in CLASSES_B)
    ways = {
        "from scratch": scratch,
        "--init, fresh heads": scratch.replace(init=source, init_map=fresh_map),
        "--init, rows carried over by name": scratch.replace(init=source),
    }
    rows = []
    for budget, (steps, minutes) in {
        f"{args.steps} steps": (args.steps, None),
        f"{args.minutes:g} min": (10**6, args.minutes),
    }.items():
        for i, (name, spec) in enumerate(ways.items()):
            run = out / f"{'steps' if minutes is None else 'minutes'}_{i}"
            result = train(_config(args, set_b, run, spec, steps, minutes))
            box, mask = _ap(result)
            rows.append((budget, name, result.iteration, box, mask))
    lines = [
        f"Pretrained on {', '.join(CLASSES_A)} ({pre.iteration} steps, box/mask AP "
        f"{_ap(pre)[0]:.1f}/{_ap(pre)[1]:.1f}); fine-tuned on {', '.join(CLASSES_B)} (pastel).",
        "",
        "| budget | start | steps | box AP | mask AP |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {b} | {n} | {s} | {bx:.1f} | {m:.1f} |" for b, n, s, bx, m in rows]
    table = "\n".join(lines)
    print(table)
    (out / "finetune_table.md").write_text(table + "\n")
    (out / "finetune_rows.json").write_text(json.dumps(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
