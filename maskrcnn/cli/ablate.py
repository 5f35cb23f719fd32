"""The ``ablate`` command: the paper's Table 2 ablations at CPU scale.

    maskrcnn ablate --table 2c --table 2d --seeds 3 --minutes-per-run 3.25 --parallel 2 \\
        --out out/ablation

One training per variant and seed under ``--out/runs/`` (rows with the same model share
their runs), then ``ablation.md``, ``ablation.csv``, ``ablation_runs.csv`` and
``ablation.png`` in ``--out``. Rerun the same command to continue an interrupted sweep:
finished runs are skipped, interrupted ones resume. Without ``--data`` (or
``--train-ann`` ...) the default data is written to ``--out/shapes``. ``--report-only``
rewrites the report from the runs there are.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_ablate(args: argparse.Namespace) -> int:
    from maskrcnn.ablation import DataPaths, SweepSettings, default_data, select_tables, sweep
    from maskrcnn.ablation.report import write_report
    from maskrcnn.ablation.sweep import plan_runs, read_result

    variants = select_tables(args.table or ["2c", "2d"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.data:
        data = DataPaths.from_dir(args.data)
        note = f"{args.data}"
    elif args.train_ann:
        if not (args.train_images and args.val_ann and args.val_images):
            raise SystemExit("--train-ann needs --train-images, --val-ann and --val-images")
        data = DataPaths(args.train_ann, args.train_images, args.val_ann, args.val_images)
        note = f"{args.train_ann} (validation: {args.val_ann})"
    else:
        notes: list[str] = []

        def say(line: str) -> None:
            print(line)
            notes.append(line)

        data = default_data(out, say=say)
        note = notes[-1].removeprefix("data: ")
    settings = SweepSettings(
        out=str(out),
        data=data,
        minutes_per_run=args.minutes_per_run,
        seeds=tuple(range(args.seeds)),
        max_iter=args.max_iter,
        parallel=args.parallel,
        retry_failed=args.retry_failed,
        keep_checkpoints=args.keep_checkpoints,
        backbone=args.backbone,
    )
    minutes = None
    if args.report_only:
        planned = plan_runs(variants, settings.seeds)
        records = [(r, read_result(r.folder(out))) for r in planned]
    else:
        result = sweep(variants, settings)
        records, minutes = result.records, result.minutes
        if result.interrupted:
            print("sweep interrupted: rerun the same command to continue it")
    files = write_report(variants, records, settings, total_minutes=minutes, data_note=note)
    print(files.markdown.read_text())
    print(f"wrote {files.markdown}, {files.csv}, {files.runs_csv}, {files.plot}")
    return 0


def add_ablate_command(subparsers: Any) -> None:
    """Adds ``ablate`` to an ``argparse`` subparsers object."""
    from maskrcnn.ablation.variants import TABLE_CHOICES

    p = subparsers.add_parser(
        "ablate",
        help="reproduce the paper's Table 2 ablations at CPU scale (resumable)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--table",
        action="append",
        choices=TABLE_CHOICES,
        help="table(s) to run (repeat the option; default: 2c and 2d)",
    )
    p.add_argument("--out", default="out/ablation", help="the sweep's folder")
    p.add_argument("--data", help="folder with train.json, val.json and images/")
    p.add_argument("--train-ann")
    p.add_argument("--train-images")
    p.add_argument("--val-ann")
    p.add_argument("--val-images")
    p.add_argument(
        "--minutes-per-run", type=float, default=3.25, help="training budget of each run"
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..K-1 per variant")
    p.add_argument(
        "--max-iter",
        type=int,
        default=None,
        help="steps of every run (default: from the budget and each model's measured speed)",
    )
    p.add_argument(
        "--parallel", type=int, default=1, help="runs at a time, each pinned to one core"
    )
    p.add_argument(
        "--backbone",
        help="pretrained ResNet every run starts from: a torchvision ResNet file, an ImageNet "
        "name (resnet18_imagenet) or one of our FPN model files (default: from scratch)",
    )
    p.add_argument("--retry-failed", action="store_true", help="rerun runs that failed")
    p.add_argument(
        "--keep-checkpoints", action="store_true", help="keep last.ckpt of finished runs"
    )
    p.add_argument(
        "--report-only", action="store_true", help="rewrite the report from existing runs"
    )
    p.set_defaults(func=_cmd_ablate)
