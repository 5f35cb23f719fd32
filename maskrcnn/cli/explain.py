"""The ``explain`` command: figures that explain a component (``explain roi-ops``)."""

from __future__ import annotations

import argparse
from typing import Any

from maskrcnn.viz.roi_explainer import RoIExplainResult, draw_roi_ops


def print_pooled(result: RoIExplainResult) -> None:
    """Prints each operator's pooled numbers, as drawn in the figure."""
    for name, rows in result.pooled_text.items():
        print(f"  {name:>10}: " + " | ".join(" ".join(row) for row in rows))


def _cmd_explain(args: argparse.Namespace) -> int:
    result = draw_roi_ops(args.out)
    print(f"wrote {result.path}")
    print_pooled(result)
    return 0


def add_explain_command(subparsers: Any) -> None:
    """Adds ``explain`` to an ``argparse`` subparsers object."""
    explain = subparsers.add_parser("explain", help="draw a figure that explains a component")
    explain.add_argument("topic", choices=["roi-ops"], help="what to explain")
    explain.add_argument("--out", required=True, help="PNG file to write")
    explain.set_defaults(func=_cmd_explain)
