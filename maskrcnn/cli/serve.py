"""The ``serve`` command, added to the main parser by :func:`add_serve_command`.

maskrcnn serve (--weights W | --onnx model.onnx) [--host 127.0.0.1] [--port 8000]
"""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cmd_serve(args: argparse.Namespace) -> int:
    import torch

    try:
        import uvicorn

        from maskrcnn.serve.app import ServeLimits, create_app
        from maskrcnn.serve.predictor import Predictor
    except ImportError as err:
        raise SystemExit(
            f"maskrcnn serve: {err.name} is missing; install the extra: pip install '.[serve]'"
        ) from err
    try:
        if (args.weights is None) == (args.onnx is None):
            raise ValueError("give --weights (the model) or --onnx (an exported graph)")
        if args.onnx is not None:
            from maskrcnn.export.onnx_runtime import OnnxMaskRCNN

            model, name = OnnxMaskRCNN(args.onnx), str(args.onnx)
        else:
            from maskrcnn.cli.evaluate import load_weights

            model, name = load_weights(args.weights), str(args.weights)
        predictor = Predictor(model=model, name=name)
        limits = ServeLimits(
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            max_pending=args.max_pending,
            default_score_thresh=args.score_thresh,
        )
        # A first run before the first user: slow first-call set-up is not theirs to wait for.
        predictor.predict(torch.zeros(3, 64, 64), score_thresh=1.0)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"maskrcnn serve: {err}") from err
    if not _is_loopback(args.host):
        print(f"warning: serving on {args.host}, reachable from other machines (no auth)")
    print(f"maskrcnn serve: {name} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(
        create_app(predictor, limits=limits),
        host=args.host,
        port=args.port,
        log_level="warning",
        limit_concurrency=limits.max_pending + 8,  # open connections, bodies being read too
    )
    return 0


def add_serve_command(subparsers: Any) -> None:
    """Adds ``serve`` to an ``argparse`` subparsers object."""
    sv = subparsers.add_parser("serve", help="HTTP server with a page: POST /predict, GET /")
    sv.add_argument("--weights", default=None, help="model file (.safetensors) or name")
    sv.add_argument("--onnx", default=None, help="an exported graph instead of --weights")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sv.add_argument(
        "--score-thresh", type=float, default=0.5, help="default score threshold of /predict"
    )
    sv.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload (MiB)")
    sv.add_argument(
        "--max-pending", type=int, default=8, help="predictions queued at once; more get 503"
    )
    sv.set_defaults(func=_cmd_serve)
