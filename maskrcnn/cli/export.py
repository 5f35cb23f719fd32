"""The ``export`` command, added to the main parser by :func:`add_export_command`.

maskrcnn export --weights W --out model.onnx [--input-dtype uint8|float32] [--opset 17]
"""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from maskrcnn.cli.evaluate import load_weights
    from maskrcnn.export import OnnxMaskRCNN, export_onnx
    from maskrcnn.export.onnx_ops import OPSET

    opset = OPSET if args.opset is None else args.opset
    try:
        model = load_weights(args.weights)
        path = export_onnx(
            model,
            args.out,
            input_dtype=args.input_dtype,
            example_size=(args.example_size[0], args.example_size[1]),
            opset=opset,
        )
        # The file loads in onnxruntime and runs on an image of another size than the example.
        runtime = OnnxMaskRCNN(path)
        probe = torch.rand(3, args.example_size[0] + 37, args.example_size[1] + 21)
        detections = len(runtime.run(probe))
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"maskrcnn export: {err}") from err
    megabytes = path.stat().st_size / 2**20
    print(
        f"wrote {path} ({megabytes:.1f} MB, ONNX opset {opset}): image [3, H, W] "
        f"{args.input_dtype} -> boxes [D, 4], labels [D], scores [D], masks [D, 1, M, M]"
    )
    print(f"checked with onnxruntime: {detections} detections on a random test image")
    return 0


def add_export_command(subparsers: Any) -> None:
    """Adds ``export`` to an ``argparse`` subparsers object."""
    ex = subparsers.add_parser("export", help="write a model as an ONNX graph (any image size)")
    ex.add_argument("--weights", required=True, help="model file (.safetensors) or name")
    ex.add_argument("--out", required=True, help="the .onnx file to write")
    ex.add_argument(
        "--input-dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="the graph's image input: uint8 0-255 (default) or float32 in [0, 1]",
    )
    ex.add_argument(
        "--example-size",
        type=int,
        nargs=2,
        default=(480, 640),
        metavar=("H", "W"),
        help="size of the tracing example (the graph takes any size)",
    )
    ex.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset, >= 16 (default: maskrcnn.export.onnx_ops.OPSET, 17)",
    )
    ex.set_defaults(func=_cmd_export)
