"""The ``maskrcnn`` command line: ``maskrcnn --help`` lists the commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from maskrcnn.explain import draw_roi_ops

    result = draw_roi_ops(out / "roi_ops.png")
    print(f"RoI operators explained: {result.path}")
    _print_pooled(result)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from maskrcnn.weights.pretrained import from_pretrained

    model = from_pretrained(args.weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for path in _image_paths(args.images):
        result = model.predict(path)
        records.append(
            {
                "file": str(path),
                "boxes": result.boxes.tolist(),
                "scores": result.scores.tolist() if result.scores is not None else [],
                "labels": result.labels.tolist(),
                "categories": result.category_names,
            }
        )
        print(f"{path}: {len(result)} instances")
    (out / "predictions.json").write_text(json.dumps(records, indent=1))
    return 0


def _image_paths(items: list[str]) -> list[Path]:
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in suffixes))
        elif p.is_file():
            paths.append(p)
        else:
            raise SystemExit(f"maskrcnn predict: no such file or folder: {p}")
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskrcnn", description="Mask R-CNN from scratch: explain, predict, demo."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main demo (writes its outputs to --out)")
    demo.add_argument("--out", default="out/demo", help="output folder")
    demo.set_defaults(func=_cmd_demo)

    explain = sub.add_parser("explain", help="draw a figure that explains a component")
    explain.add_argument("topic", choices=["roi-ops"], help="what to explain")
    explain.add_argument("--out", required=True, help="PNG file to write")
    explain.set_defaults(func=_cmd_explain)

    predict = sub.add_parser("predict", help="detect and segment instances in images")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--weights", required=True, help="model file or pretrained name")
    predict.add_argument("--out", required=True, help="output folder")
    predict.set_defaults(func=_cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
