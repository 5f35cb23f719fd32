"""The ``maskrcnn`` command line: ``maskrcnn --help`` lists the commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maskrcnn.data.cli import add_data_commands
from maskrcnn.engine.cli import add_engine_commands
from maskrcnn.engine.train_cli import add_train_command


def _cmd_explain(args: argparse.Namespace) -> int:
    from maskrcnn.explain import draw_roi_ops

    result = draw_roi_ops(args.out)
    print(f"wrote {result.path}")
    _print_pooled(result)
    return 0


def _print_pooled(result) -> None:
    for name, rows in result.pooled_text.items():
        print(f"  {name:>10}: " + " | ".join(" ".join(row) for row in rows))


def _cmd_demo(args: argparse.Namespace) -> int:
    from maskrcnn.engine.demo import DemoSettings, run_demo
    from maskrcnn.explain import draw_roi_ops

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    explained = draw_roi_ops(out / "roi_ops.png")
    print(f"RoI operators explained: {explained.path}")
    _print_pooled(explained)
    settings = DemoSettings() if args.minutes is None else DemoSettings.for_budget(args.minutes)
    result = run_demo(out, settings)
    print(f"\ndemo finished in {result.minutes:.1f} min ({result.iterations} training steps)")
    print(f"  box AP  (0.5:0.95): {result.box_ap:.3f}")
    print(f"  mask AP (0.5:0.95): {result.mask_ap:.3f}")
    print(f"  model:       {result.model}")
    print(f"  predictions: {result.grid}")
    print(f"  curves:      {result.curves}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskrcnn",
        description="Mask R-CNN from scratch: data, train, eval, predict, explain, demo.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main demo (writes its outputs to --out)")
    demo.add_argument("--out", default="out/demo", help="output folder")
    demo.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget in minutes (default 10.5: 750 steps); steps scale with it",
    )
    demo.set_defaults(func=_cmd_demo)

    explain = sub.add_parser("explain", help="draw a figure that explains a component")
    explain.add_argument("topic", choices=["roi-ops"], help="what to explain")
    explain.add_argument("--out", required=True, help="PNG file to write")
    explain.set_defaults(func=_cmd_explain)

    add_data_commands(sub)
    add_engine_commands(sub)
    add_train_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
