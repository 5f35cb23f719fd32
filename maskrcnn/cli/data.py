"""``maskrcnn data ...``: write the synthetic shapes dataset, check a COCO dataset.

:func:`add_data_commands` is wired into ``maskrcnn.cli``; each command's ``func`` takes the
parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_shapes(args: argparse.Namespace) -> int:
    """``maskrcnn data shapes OUT --train N --val M --seed S [--keypoints]``."""
    from maskrcnn.data.figures import write_figures_dataset
    from maskrcnn.data.shapes import write_shapes_dataset

    common = dict(train=args.train, val=args.val, seed=args.seed)
    size = (args.height, args.width)
    if args.keypoints:
        if args.classes:
            raise ValueError("--classes chooses shape classes; the --keypoints set has figures")
        files = write_figures_dataset(Path(args.out), image_size=size, **common)
    else:
        files = write_shapes_dataset(
            Path(args.out),
            image_size=size,
            classes=tuple(args.classes.split(",")) if args.classes else None,
            colours=args.colours,
            **common,
        )
    print(f"wrote {args.train} training and {args.val} validation images to {files.image_dir}")
    print(f"  {files.train_ann}")
    print(f"  {files.val_ann}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """``maskrcnn data check --ann J --images DIR``: prints a table; 1 if there are errors."""
    from maskrcnn.data.check import check_dataset, format_report

    report = check_dataset(args.ann, args.images, decode=not args.headers_only)
    print(format_report(report, examples=args.examples))
    return 1 if report.has_errors else 0


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {value}")
    return value


def _image_side(text: str) -> int:
    value = int(text)
    if value < 32:
        raise argparse.ArgumentTypeError(f"expected at least 32 pixels, got {value}")
    return value


def add_data_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``data`` (with ``shapes`` and ``check``) to a parser's ``add_subparsers()`` object.

    Returns:
        The ``data`` parser.
    """
    data = subparsers.add_parser("data", help="make or check datasets")
    sub = data.add_subparsers(dest="data_command", required=True)

    shapes = sub.add_parser(
        "shapes", help="write the synthetic shapes dataset (COCO json + PNG images)"
    )
    shapes.add_argument("out", help="output folder (gets train.json, val.json, images/)")
    shapes.add_argument("--train", type=_non_negative, default=200, help="training images")
    shapes.add_argument("--val", type=_non_negative, default=50, help="validation images")
    shapes.add_argument("--seed", type=int, default=0, help="random seed")
    shapes.add_argument("--height", type=_image_side, default=192, help="image height (landscape)")
    shapes.add_argument("--width", type=_image_side, default=256, help="image width (landscape)")
    shapes.add_argument(
        "--classes",
        help="comma-separated shape classes (default circle,square,triangle,star; also "
        "hexagon, cross, pentagon): a second task for fine-tuning experiments",
    )
    shapes.add_argument(
        "--colours", choices=("vivid", "pastel"), default="vivid", help="object colours"
    )
    shapes.add_argument(
        "--keypoints",
        action="store_true",
        help="stick figures with 11 named keypoints instead (a COCO keypoint dataset)",
    )
    shapes.set_defaults(func=cmd_shapes)

    check = sub.add_parser("check", help="check a COCO dataset before training on it")
    check.add_argument("--ann", required=True, help="COCO annotation json")
    check.add_argument("--images", required=True, help="image folder")
    check.add_argument(
        "--headers-only",
        action="store_true",
        help="read image headers only (faster; corrupt pixel data goes unnoticed)",
    )
    check.add_argument("--examples", type=int, default=3, help="offenders shown per check")
    check.set_defaults(func=cmd_check)
    return data
