"""The ``demo`` command: data, training, evaluation and pictures in one run (``make demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from maskrcnn.cli.explain import print_pooled


def _cmd_demo(args: argparse.Namespace) -> int:
    from maskrcnn.demo import DemoSettings, run_demo
    from maskrcnn.viz.roi_explainer import draw_roi_ops

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    explained = draw_roi_ops(out / "roi_ops.png")
    print(f"RoI operators explained: {explained.path}")
    print_pooled(explained)
    settings = DemoSettings() if args.minutes is None else DemoSettings.for_budget(args.minutes)
    result = run_demo(out, settings)
    print(f"\ndemo finished in {result.minutes:.1f} min ({result.iterations} training steps)")
    print(f"  box AP  (0.5:0.95): {result.box_ap:.3f}")
    print(f"  mask AP (0.5:0.95): {result.mask_ap:.3f}")
    print(f"  model:       {result.model}")
    print(f"  predictions: {result.grid}")
    print(f"  curves:      {result.curves}")
    return 0


def add_demo_command(subparsers: Any) -> None:
    """Adds ``demo`` to an ``argparse`` subparsers object."""
    demo = subparsers.add_parser("demo", help="run the main demo (writes its outputs to --out)")
    demo.add_argument("--out", default="out/demo", help="output folder")
    demo.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget in minutes (default 10.5: 750 steps); steps scale with it",
    )
    demo.set_defaults(func=_cmd_demo)
