"""The ``maskrcnn`` command line: ``maskrcnn --help`` lists the commands.

One module per command group: :mod:`~maskrcnn.cli.data` (``data shapes``, ``data check``),
:mod:`~maskrcnn.cli.train`, :mod:`~maskrcnn.cli.recipes`, :mod:`~maskrcnn.cli.evaluate`
(``eval``, ``predict``), :mod:`~maskrcnn.cli.explain`, :mod:`~maskrcnn.cli.demo`,
:mod:`~maskrcnn.cli.export`, :mod:`~maskrcnn.cli.serve` and :mod:`~maskrcnn.cli.ablate`.
"""

from __future__ import annotations

import argparse
import sys

from maskrcnn.cli.ablate import add_ablate_command
from maskrcnn.cli.data import add_data_commands
from maskrcnn.cli.demo import add_demo_command
from maskrcnn.cli.evaluate import add_eval_commands
from maskrcnn.cli.explain import add_explain_command
from maskrcnn.cli.export import add_export_command
from maskrcnn.cli.recipes import add_recipes_command
from maskrcnn.cli.serve import add_serve_command
from maskrcnn.cli.train import add_train_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskrcnn",
        description=(
            "Mask R-CNN from scratch: data, train, recipes, eval, predict, explain, demo, export, "
            "serve, ablate."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_demo_command(sub)
    add_explain_command(sub)
    add_data_commands(sub)
    add_eval_commands(sub)
    add_train_command(sub)
    add_recipes_command(sub)
    add_export_command(sub)
    add_serve_command(sub)
    add_ablate_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
