"""The ``eval`` and ``predict`` commands, added to the main parser by :func:`add_eval_commands`.

maskrcnn eval --weights W --ann J --images DIR [--out DIR] [--max-images N] [--precision P]
              [--coco-backend pycocotools|faster]
maskrcnn predict IMAGES... (--weights W | --onnx model.onnx) --out DIR [--score-thresh 0.5]
                 [--precision P]

``eval`` prints the AP table, then inference and COCOeval apart, each in images per second
(also under ``"timing"`` in metrics.json). ``--coco-backend``: COCOeval's implementation
(default ``faster``, faster-coco-eval, where installed: the same numbers as pycocotools).

``--precision`` (fp32, bf16, fp16, auto) overrides the model file's inference precision
(``ModelConfig.precision``) for the run (not for an ``--onnx`` graph, which runs in fp32).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from maskrcnn.config import PRECISIONS, check_precision


def load_weights(weights: str, *, precision: str | None = None) -> Any:
    """Our ``.safetensors`` model file (:func:`maskrcnn.weights.native.load_model`).

    Anything else (a published name, a torchvision or detectron2 file) goes through
    :func:`maskrcnn.weights.pretrained.from_pretrained`. ``precision``, if given, replaces the
    model's inference precision.
    """
    path = Path(weights)
    if path.suffix == ".safetensors":
        from maskrcnn.weights.native import load_model

        model = load_model(path)
    else:
        from maskrcnn.weights.pretrained import from_pretrained

        model = from_pretrained(weights)
    return model if precision is None else model.set_precision(check_precision(precision))


def _cmd_eval(args: argparse.Namespace) -> int:
    from maskrcnn.data.coco import CocoDataset
    from maskrcnn.evaluation.coco_eval import evaluate_coco
    from maskrcnn.evaluation.results import LabelMap

    try:
        dataset = CocoDataset(args.ann, args.images)
        model = load_weights(args.weights, precision=args.precision)
        # Labels are matched to the dataset's category ids by name, whatever the model's layout.
        label_map = LabelMap.from_names(
            model.cfg.category_names,
            dataset.coco.loadCats(dataset.coco.getCatIds()),
            model=str(args.weights),
            dataset=str(args.ann),
        )
        result = evaluate_coco(
            model,
            dataset,
            categories=label_map,
            out_dir=args.out,
            max_images=args.max_images,
            progress=True,
            coco_backend=args.coco_backend,
        )
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"maskrcnn eval: {err}") from err
    print(f"{result.num_images} images, {result.num_detections} detections")
    if args.out:
        print(f"wrote {Path(args.out) / 'results.json'}, metrics.json, ap_table.md")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from maskrcnn.evaluation.predict import predict_folder

    try:
        if (args.weights is None) == (args.onnx is None):
            raise ValueError("give --weights (the model) or --onnx (an exported graph)")
        if args.onnx is not None:
            from maskrcnn.export.onnx_runtime import OnnxMaskRCNN

            model = OnnxMaskRCNN(args.onnx)
        else:
            model = load_weights(args.weights, precision=args.precision)
        predict_folder(
            model,
            args.images,
            args.out,
            score_thresh=args.score_thresh,
            batch_size=args.batch_size,
            num_workers=args.workers,
            skip_bad_images=args.skip_bad_images,
        )
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"maskrcnn predict: {err}") from err
    return 0


def add_eval_commands(subparsers: Any) -> None:
    """Adds ``eval`` and ``predict`` to an ``argparse`` subparsers object."""
    ev = subparsers.add_parser("eval", help="COCO box and mask AP of a model on a dataset")
    ev.add_argument("--weights", required=True, help="model file (.safetensors)")
    ev.add_argument("--ann", required=True, help="COCO annotation file (json)")
    ev.add_argument("--images", required=True, help="folder of the annotation file's images")
    ev.add_argument("--out", default=None, help="folder for results.json, metrics.json, table")
    ev.add_argument(
        "--max-images", type=_positive, default=None, help="evaluate only the first N (N >= 1)"
    )
    ev.add_argument(
        "--coco-backend",
        choices=("pycocotools", "faster"),
        default=None,
        help="COCOeval implementation (default: faster, i.e. faster-coco-eval, where installed; "
        "its numbers equal pycocotools')",
    )
    _add_precision(ev)
    ev.set_defaults(func=_cmd_eval)

    pr = subparsers.add_parser("predict", help="detect and segment instances in images")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--weights", default=None, help="model file (.safetensors) or name")
    pr.add_argument(
        "--onnx", default=None, help="an exported graph (maskrcnn export) instead of --weights"
    )
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--score-thresh", type=float, default=0.5, help="minimum score drawn/kept")
    pr.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    pr.add_argument("--workers", type=int, default=2, help="image decoding processes")
    pr.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="name, count and skip unreadable images (default: the others are still written, "
        "then an error names them)",
    )
    _add_precision(pr)
    pr.set_defaults(func=_cmd_predict)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a count >= 1, got {value}")
    return value


def _add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="inference precision (default: the model's own, fp32 unless saved otherwise)",
    )
