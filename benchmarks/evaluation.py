"""Evaluation throughput: inference and COCOeval apart, COCOeval with each back end.

Writes (once; cached under ``--data``) a validation set of the synthetic shapes
(``maskrcnn data shapes``: PNG files and COCO JSON), runs the demo's model (the ``cpu-small``
recipe's ResNet-18-FPN) over it once, image by image as ``maskrcnn eval`` does, and scores the
same detections with pycocotools' COCOeval and with faster-coco-eval's. Prints images per
second for inference (forward, paste, RLE encoding; image loading apart) and for COCOeval
(loadRes, evaluate, accumulate, summarize, box and mask) with each back end, whether the two
back ends' numbers print the same, and the machine's matrix-multiply rate with the model's
FLOP floor per image (``benchmarks/inference.py``'s measure).

Without ``--weights`` the model has random weights and keeps every detection (score
threshold 0, up to 100 per image), so COCOeval sees as many detections as a real model's
evaluation; its AP is meaningless. The detections and the inference time are saved beside the
data; ``--reuse-detections`` scores saved ones again without running the model.

    python benchmarks/evaluation.py --images 5000 --threads 2
    python benchmarks/evaluation.py --images 50          # a quick check
    python benchmarks/evaluation.py --images 5000 --reuse-detections   # COCOeval only
    python benchmarks/evaluation.py --weights out/demo/model_final.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from inference import count_flops, matmul_rate

from maskrcnn.config import override
from maskrcnn.data.shapes import SHAPE_CATEGORIES, write_shapes_dataset
from maskrcnn.evaluation.coco_eval import (
    COCO_BACKENDS,
    EvalResult,
    ShardResult,
    evaluate_shard,
    merge_shards,
    run_cocoeval,
    shard_indices,
)
from maskrcnn.evaluation.results import resolve_label_map
from maskrcnn.evaluation.source import open_source
from maskrcnn.modeling import build_model
from maskrcnn.modeling.randomize import randomize_
from maskrcnn.train.recipes import CPU_SMALL


def shapes_validation_set(folder: Path, images: int) -> Path:
    """``folder/val.json`` with at least ``images`` images (written if it has fewer)."""
    ann = folder / "val.json"
    if ann.is_file() and len(json.loads(ann.read_text())["images"]) >= images:
        return ann
    print(f"writing {images} validation images of the shapes set to {folder} ...", flush=True)
    start = time.perf_counter()
    write_shapes_dataset(folder, train=0, val=images, seed=0)
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    return ann


def demo_model(weights: str | None, *, score_thresh: float | None) -> torch.nn.Module:
    """The demo's model: from ``weights``, else random with every detection kept."""
    if weights is None:
        names = ("__background__", *(name for _, name in SHAPE_CATEGORIES))
        cfg = CPU_SMALL.model.model_config(len(names), names)
        cfg = override(cfg, "box_head.score_thresh", 0.0 if score_thresh is None else score_thresh)
        torch.manual_seed(0)
        return randomize_(build_model(cfg), seed=0).eval()
    from maskrcnn.cli.evaluate import load_weights

    model = load_weights(weights)
    if score_thresh is not None:  # the same weights in a model built with the threshold
        rebuilt = build_model(override(model.cfg, "box_head.score_thresh", score_thresh))
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="validation images")
    parser.add_argument(
        "--data", default="out/eval_bench/shapes", help="cached shapes set (written if missing)"
    )
    parser.add_argument("--weights", default=None, help="a model file (default: random weights)")
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=None,
        help="box score threshold (default: 0 for random weights, the model's own otherwise)",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--reuse-detections",
        action="store_true",
        help="score the detections a previous run saved (same images, weights, threshold)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ann = shapes_validation_set(Path(args.data), args.images)
    source = open_source((ann, Path(args.data) / "images"))
    model = demo_model(args.weights, score_thresh=args.score_thresh)
    label_map = resolve_label_map(
        None, source.coco.loadCats(source.coco.getCatIds()), model.cfg.category_names
    )
    count = min(args.images, len(source))

    tag = "random" if args.weights is None else Path(args.weights).stem
    saved = Path(args.data) / f"detections_{count}_{tag}_{args.score_thresh}.json"
    if args.reuse_detections and saved.is_file():
        print(f"reusing the detections and inference time in {saved}")
        merged = ShardResult(**json.loads(saved.read_text()))
    else:
        indices = shard_indices(count, 0, 1)
        merged = merge_shards([evaluate_shard(model, source, indices, label_map, progress=True)])
        saved.write_text(json.dumps(dataclasses.asdict(merged)))
    results: dict[str, EvalResult] = {}
    for backend in COCO_BACKENDS:
        results[backend] = run_cocoeval(source.coco, merged, coco_backend=backend)

    rate = matmul_rate(torch.float32)
    image, _ = source.load(0)
    flops = count_flops(model, [image])
    n_det = len(merged.detections)
    print()
    print(
        f"{count} images ({image.shape[1]}x{image.shape[2]} and transposed), {n_det} detections "
        f"({n_det / count:.1f} per image), {args.threads} threads, "
        + (f"weights {args.weights}" if args.weights else "random weights")
    )
    timing = results["pycocotools"].timing
    assert timing is not None
    print(
        f"inference: {timing.inference_images_per_second:.2f} images/s "
        f"({timing.inference_seconds:.1f} s; image loading {timing.load_seconds:.1f} s apart)"
    )
    print(
        f"  matmul rate {rate / 1e9:.0f} GFLOP/s (fp32); first image {flops / 1e9:.2f} GFLOP: "
        f"floor {rate / flops:.1f} images/s"
    )
    for backend, result in results.items():
        t = result.timing
        assert t is not None
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in t.cocoeval_seconds.items())
        print(
            f"COCOeval {backend:>11}: {t.cocoeval_images_per_second:8.1f} images/s "
            f"({t.cocoeval_total_seconds:.2f} s: {parts})"
        )
    reference, faster = results["pycocotools"], results["faster"]
    for task in ("bbox", "segm"):
        a = np.asarray(getattr(reference, task).values)
        b = np.asarray(getattr(faster, task).values)
        same = [f"{v:0.3f}" for v in a] == [f"{v:0.3f}" for v in b]
        print(
            f"  {task}: AP {a[0]:.3f}; the back ends print {'the same' if same else 'DIFFERENT'}"
            f" numbers (largest float difference {np.abs(a - b).max():.2g})"
        )
    slow, fast = reference.timing, faster.timing
    if slow is not None and fast is not None:
        ratio = slow.cocoeval_total_seconds / fast.cocoeval_total_seconds
        print(f"faster-coco-eval runs {ratio:.1f}x as fast as pycocotools here")


if __name__ == "__main__":
    main()
