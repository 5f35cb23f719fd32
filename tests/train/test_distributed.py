"""Two processes with Gloo on the CPU: ranks stay identical and match one process.

The comparison with a one-process run needs the two to compute the same gradient up to float
rounding. Mask R-CNN's losses are normalised over the whole batch (e.g. the mask loss is a
mean over all foreground RoIs of the batch), while DistributedDataParallel averages per-rank
means, and its RoI/anchor sampling draws random subsets. Both agree exactly in exact
arithmetic when every image contributes the same number of sampled anchors, RoIs and
foreground RoIs, and sampling takes all candidates. The data here is built for that: every
image has the same size and the same object geometry (two objects, different classes and
colours per image), the samplers' batch sizes exceed the candidates, the RoI IoU thresholds
are 0.99 (foreground RoIs = the two ground-truth boxes) and a fixed number of proposals.
What is left is the order of float32 summation (per-image backward + all-reduce vs. one
batched backward), a relative error of ~1e-7 per operation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from train_setup import free_port, subprocess_env

from maskrcnn.train.checkpoint import load_checkpoint
from maskrcnn.train.config import (
    CheckpointConfig,
    DataConfig,
    LogConfig,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
)
from maskrcnn.train.model_spec import ModelSpec

H, W = 64, 96
OBJECTS = [
    [11.0, 9.0, 39.0, 9.0, 39.0, 37.0, 11.0, 37.0],  # a square
    [52.0, 50.0, 86.0, 50.0, 69.0, 17.0],  # a triangle
]
OVERRIDES = {
    "input.min_size": (64,),
    "input.max_size": 96,
    "fpn.out_channels": 64,
    "box_head.fc_dim": 256,
    "mask_head.conv_dim": 64,
    "rpn.pre_nms_topk_train": 100,
    "rpn.post_nms_topk_train": 16,
    "rpn.batch_size_per_image": 100000,
    "box_head.batch_size_per_image": 100000,
    "box_head.fg_iou_thresh": 0.99,
    "box_head.bg_iou_thresh": 0.99,
    "rpn.pre_nms_topk_test": 100,
    "rpn.post_nms_topk_test": 20,
    "box_head.detections_per_image": 10,
}

WORKER = """
import json, sys, torch
from maskrcnn.train.config import TrainConfig
from maskrcnn.train.trainer import Trainer
cfg = TrainConfig.from_dict(json.loads(open(sys.argv[1]).read()))
trainer = Trainer(cfg)
result = trainer.run()
torch.save(trainer.model.state_dict(), sys.argv[2])
open(sys.argv[2] + ".json", "w").write(json.dumps(result.eval.flat()))
"""


def _write_split(root: Path, name: str, count: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(count):
        pixels = rng.integers(0, 80, size=(H, W, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        categories = [1, 2] if (i + seed) % 2 == 0 else [2, 1]
        for k, (polygon, cat) in enumerate(zip(OBJECTS, categories)):
            colour = tuple(int(c) for c in rng.integers(120, 256, size=3))
            draw.polygon(list(zip(polygon[::2], polygon[1::2])), fill=colour)
            xs, ys = polygon[::2], polygon[1::2]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "segmentation": [polygon],
                    "bbox": box,
                    "area": box[2] * box[3] / (1 + k),
                    "iscrowd": 0,
                }
            )
        file_name = f"{name}_{i}.png"
        image.save(root / "images" / file_name)
        images.append({"id": i + 1, "file_name": file_name, "height": H, "width": W})
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "triangle"}],
    }
    (root / f"{name}.json").write_text(json.dumps(coco))
    return root / f"{name}.json"


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    train_ann = _write_split(tmp_path, "train", 4, seed=0)
    val_ann = _write_split(tmp_path, "val", 2, seed=1)
    images = str(tmp_path / "images")
    base = TrainConfig(
        data=DataConfig(
            train_ann=str(train_ann),
            train_images=images,
            val_ann=str(val_ann),
            val_images=images,
            batch_size=2,  # global: 2 ranks x 1 image, or 1 process x 2 images
            flip_prob=0.0,
            num_workers=0,
        ),
        model=ModelSpec(preset="r18_fpn", overrides=OVERRIDES),
        optim=OptimConfig(base_lr=0.01, base_batch_size=2),
        schedule=ScheduleConfig(max_iter=4, warmup_iters=2),
        checkpoint=CheckpointConfig(period=100),
        log=LogConfig(period=1, progress=False),
        runtime=RuntimeConfig(device="cpu"),
    )
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = []
    port = str(free_port())
    for rank, world, run in [(0, 2, "ddp"), (1, 2, "ddp"), (0, 1, "single")]:
        cfg_file = tmp_path / f"{run}{rank}.json"
        cfg_file.write_text(json.dumps(base.replace(out_dir=str(tmp_path / run)).to_dict()))
        env = subprocess_env()
        if world > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, GLOO_SOCKET_IFNAME="lo")
        log = open(tmp_path / f"{run}{rank}.log", "w")
        out = str(tmp_path / f"{run}{rank}.pt")
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, str(script), str(cfg_file), out],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    for proc, log in procs:
        code = proc.wait(timeout=300)
        log.close()
        assert code == 0, Path(log.name).read_text()[-3000:]

    rank0 = torch.load(tmp_path / "ddp0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp1.pt", weights_only=True)
    single = torch.load(tmp_path / "single0.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks diverged"
    evals = [json.loads((tmp_path / f"ddp{r}.pt.json").read_text()) for r in (0, 1)]
    assert evals[0] == evals[1]  # the evaluation is gathered and shared
    initial = _initial_weights(base)
    worst, moved = 0.0, 0.0
    for key, value in single.items():
        if value.is_floating_point():
            worst = max(worst, (value - rank0[key]).abs().max().item())
            moved = max(moved, (value - initial[key]).abs().max().item())
    print(f"max |single - ddp| = {worst:.3g}; max |update| = {moved:.3g}")
    assert moved > 1e-3  # training did move the weights
    assert worst < 1e-5, f"one process and two ranks differ by {worst:.3g}"
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["type"] == "train"] == [1, 2, 3, 4]
    state = load_checkpoint(tmp_path / "ddp" / "last.ckpt")  # written by rank 0 alone
    assert state.iteration == 4 and len(state.rng) == 2  # with both ranks' generators
    assert not torch.equal(state.rng[0].torch, state.rng[1].torch)  # seeded per rank


def _initial_weights(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    from maskrcnn.modeling import build_model

    torch.manual_seed(cfg.runtime.seed)
    names = ("__background__", "square", "triangle")
    return build_model(cfg.model.model_config(3, names)).state_dict()
