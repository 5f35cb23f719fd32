"""Keypoint R-CNN on the synthetic stick figures, on a CPU: keypoint (OKS) AP as it trains.

Writes the figures set (``maskrcnn data shapes --keypoints``: real PNG files and COCO keypoint
JSON), trains the demo's ResNet-18-FPN from scratch with a keypoint head and no mask head for
a wall-clock budget, evaluates box AP and OKS keypoint AP (COCOeval ``keypoints``, sigma 0.067
for each of the 11 joints) on the validation split at a few points, and prints them as a
markdown table; a predictions grid with skeletons goes to ``OUT/keypoint_predictions.png``.

    python benchmarks/keypoints_train.py --out out/keypoints --minutes 4.5
    python benchmarks/keypoints_train.py --out /tmp/kp --tiny   # a seconds-long check

The keypoint head is slimmed for a CPU (4 convs of 128 instead of 8 of 512); the rest of the
model and the optimiser are the demo's (``maskrcnn.demo``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.figures import write_figures_dataset
from maskrcnn.demo import DEMO_MODEL_OVERRIDES, DemoSettings
from maskrcnn.train.config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LogConfig,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
)
from maskrcnn.train.model_spec import ModelSpec
from maskrcnn.train.recipes import CPU_SMALL
from maskrcnn.train.trainer import train
from maskrcnn.viz.draw import predictions_grid
from maskrcnn.weights.native import load_model

KEYPOINT_OVERRIDES = {
    **DEMO_MODEL_OVERRIDES,
    "mask_on": False,
    "keypoint_head.num_convs": 4,
    "keypoint_head.conv_dim": 128,
}
STEPS_PER_MINUTE = 70  # steps the budget is planned for (the project machine ran ~68 with others)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (data, run, figure)")
    parser.add_argument("--minutes", type=float, default=4.5, help="training budget")
    parser.add_argument("--train", type=int, default=400, help="training images")
    parser.add_argument("--val", type=int, default=60, help="validation images")
    parser.add_argument("--evals", type=int, default=4, help="evaluations during training")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long check of the script")
    args = parser.parse_args()

    out = Path(args.out)
    demo = DemoSettings()
    overrides = dict(KEYPOINT_OVERRIDES)
    n_train, n_val, batch = args.train, args.val, CPU_SMALL.batch_size
    steps = max(20, round(args.minutes * STEPS_PER_MINUTE))
    minutes = args.minutes
    size = (192, 256)
    if args.tiny:
        n_train, n_val, batch, steps, minutes, size = 4, 2, 2, 4, 1.0, (96, 128)
        overrides.update({"input.min_size": (96,), "input.max_size": 128})
    data_dir = out / "figures"
    if not (data_dir / "train.json").is_file():
        write_figures_dataset(data_dir, train=n_train, val=n_val, seed=0, image_size=size)
    run_dir = out / "run"
    period = max(1, steps // args.evals)
    cfg = TrainConfig(
        data=DataConfig(
            train_ann=str(data_dir / "train.json"),
            train_images=str(data_dir / "images"),
            val_ann=str(data_dir / "val.json"),
            val_images=str(data_dir / "images"),
            batch_size=batch,
            num_workers=0 if args.tiny else demo.workers,
        ),
        out_dir=str(run_dir),
        model=ModelSpec(preset="r18_fpn", overrides=overrides),
        optim=OptimConfig(
            kind=CPU_SMALL.optim.kind,
            base_lr=args.lr,
            base_batch_size=batch,
            weight_decay=CPU_SMALL.optim.weight_decay,
        ),
        schedule=ScheduleConfig(
            max_iter=steps,
            warmup_iters=min(CPU_SMALL.schedule.warmup_iters, steps // 4),
            lr_steps=(0.8, 0.95),
        ),
        checkpoint=CheckpointConfig(period=10**9),
        eval=EvalConfig(period=period),
        log=LogConfig(period=10, progress=False),
        runtime=RuntimeConfig(precision=CPU_SMALL.precision, seed=0, max_minutes=minutes),
    )
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["type"] == "eval"]
    print(f"\n{result.iteration} steps in {seconds / 60:.1f} min ({result.stop_reason})")
    print("| step | box AP | keypoint AP (OKS) | keypoint AP50 |")
    print("|---:|---:|---:|---:|")
    for r in evals:
        print(
            f"| {r['iter']} | {100 * r['bbox_AP']:.1f} | {100 * r['keypoints_AP']:.1f} | "
            f"{100 * r['keypoints_AP50']:.1f} |"
        )
    if result.final_model is not None:
        model = load_model(result.final_model)
        val = CocoDataset(data_dir / "val.json", data_dir / "images")
        samples = [val[i] for i in range(min(4, len(val)))]
        with torch.inference_mode():
            preds = [model.predict(s.image) for s in samples]
        skeleton = model.cfg.keypoint_head.skeleton if model.cfg.keypoint_head else ()
        grid = predictions_grid(
            [s.image for s in samples],
            [s.gt for s in samples],
            preds,
            out / "keypoint_predictions.png",
            skeleton=skeleton,
        )
        print(f"predictions: {grid}")


if __name__ == "__main__":
    main()
