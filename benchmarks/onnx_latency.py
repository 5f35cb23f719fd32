"""Latency of one image: eager fp32, eager bf16 and the exported graph on onnxruntime.

The inference benchmark's set-up (``benchmarks/inference.py``): torchvision's
``maskrcnn_resnet50_fpn`` with random weights converted by ``from_torchvision``,
``box_score_thresh=0`` so that 100 detections go through the mask head, and the same 640x480
picture (resized to 800x1066 inside the model). Each variant returns the same thing (boxes,
labels, scores and masks pasted into the image): ``model.detect([image])`` for the eager
model, ``OnnxMaskRCNN.detect([image])`` for the graph (graph run + the same paste). The three
run interleaved, ``--reps`` rounds after one warm-up round, on ``--threads`` threads; the
table gives medians.

    python benchmarks/onnx_latency.py [--reps 7] [--threads 2] [--onnx /tmp/r50.onnx]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from maskrcnn import from_torchvision
from maskrcnn.export import OnnxMaskRCNN, export_onnx
from maskrcnn.modeling.precision import cpu_has_fast_bf16
from maskrcnn.modeling.randomize import randomize_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="timed rounds (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--onnx", default=None, help="where to write the graph (default: tmp)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    kwargs = dict(box_score_thresh=0.0)
    reference = randomize_(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs))
    fp32 = from_torchvision(reference.state_dict(), "v1", norm_eps=1e-5, **kwargs)
    bf16 = from_torchvision(reference.state_dict(), "v1", norm_eps=1e-5, **kwargs)
    if hasattr(bf16, "set_precision"):  # the precision lives in the config
        bf16.set_precision("bf16")
    else:
        bf16.precision = "bf16"
    del reference
    image = torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(1))

    folder = tempfile.TemporaryDirectory()
    path = Path(args.onnx) if args.onnx else Path(folder.name) / "r50_fpn.onnx"
    start = time.perf_counter()
    export_onnx(fp32, path, input_dtype="float32")
    print(f"exported {path} in {time.perf_counter() - start:.1f} s")
    runtime = OnnxMaskRCNN(path, threads=args.threads)

    def eager(model: torch.nn.Module) -> Callable[[], int]:
        def run() -> int:
            with torch.inference_mode():
                return len(model.detect([image])[0])

        return run

    variants: dict[str, Callable[[], int]] = {
        "eager fp32": eager(fp32),
        "eager bf16" + ("" if cpu_has_fast_bf16() else " (runs fp32: no fast bf16)"): eager(bf16),
        "onnxruntime fp32": lambda: len(runtime.detect([image])[0]),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    detections: dict[str, int] = {}
    for rep in range(args.reps + 1):
        for name, run in variants.items():
            start = time.perf_counter()
            detections[name] = run()
            if rep > 0:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    print(f"\n{args.reps} interleaved rounds, {args.threads} threads, 640x480 -> 800x1066\n")
    print("| variant | median (s) | min (s) | detections |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        print(
            f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {detections[name]} |"
        )
    folder.cleanup()


if __name__ == "__main__":
    main()
