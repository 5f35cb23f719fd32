"""Training-step time of ours against torchvision's Mask R-CNN, with its FLOP floor.

One training step (forward, backward, SGD step) of the demo's model (ResNet-18-FPN with
``maskrcnn.demo.DEMO_MODEL_OVERRIDES``) or of R50-FPN at the paper's settings (800x1333),
ours and torchvision's with the same batch, precision and random inputs, interleaved in one
process. Prints each stage's share of the step (forward hooks on the stage modules; backward
and the optimiser step timed whole; "losses/other" is the rest of the forward), the step's
FLOPs (forward and backward, ``torch.utils.flop_counter``) over the machine's matmul rate in
the same precision as the floor, and the peak RSS growth during the timed steps (Linux VmHWM,
reset before the model's steps; it includes autograd's saved tensors).

Differences from ours that torchvision cannot match on the demo model: its FPN and box head keep
fixed widths (256 channels, 1024-wide FC layers; ours 128 / 512) and its RoIAlign is the
legacy unaligned one. On R50-FPN both freeze the stem and res2 and use frozen BatchNorm (the
paper's fine-tuning from ImageNet weights).

    python benchmarks/training.py --model demo --precision bf16 --reps 5
    python benchmarks/training.py --model r50 --batch 2 --precision fp32 --reps 3
    python benchmarks/training.py --quick   # seconds: one rep, tiny batch, no torchvision
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from demo_vs_torchvision import build_reference
from inference import (
    StageTimer,
    flop_counter,
    matmul_rate,
    our_stages,
    peak_rss_mb,
    reset_peak_rss,
)
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from maskrcnn import build_model, preset
from maskrcnn.config import override
from maskrcnn.demo import DEMO_MODEL_OVERRIDES

NUM_CLASSES = 6


def build_ours(kind: str) -> nn.Module:
    if kind == "demo":
        cfg = preset("r18_fpn", NUM_CLASSES)
        for key, value in DEMO_MODEL_OVERRIDES.items():
            cfg = override(cfg, key, value)
        return build_model(cfg)
    return build_model(preset("r50_fpn", NUM_CLASSES))


def build_torchvision(kind: str) -> nn.Module:
    if kind == "demo":  # the demo's settings, as the demo-vs-torchvision comparison builds them
        return build_reference(NUM_CLASSES)
    # maskrcnn_resnet50_fpn(weights=None, weights_backbone=None) would train every layer with
    # live BatchNorm; the paper's settings (and torchvision's own, from ImageNet weights) freeze
    # the stem and res2 and use frozen BatchNorm, as our r50_fpn does.
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
    )
    return MaskRCNN(backbone, num_classes=NUM_CLASSES)


def stages_ours(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The inference benchmark's stages, less the paste (no postprocessing in training)."""
    return {name: modules for name, modules in our_stages(model).items() if name != "paste"}


def stages_torchvision(model: nn.Module) -> dict[str, list[nn.Module]]:
    heads = model.roi_heads
    return {
        "backbone": [model.backbone.body],
        "fpn": [model.backbone.fpn],
        "rpn": [model.rpn],
        "box head": [heads.box_roi_pool, heads.box_head, heads.box_predictor],
        "mask head": [heads.mask_roi_pool, heads.mask_head, heads.mask_predictor],
    }


def make_batch(batch: int, size: tuple[int, int], seed: int) -> tuple[list, list]:
    """Random images with 3 box-and-mask objects each, in the network frame."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, h, w, generator=gen))
        x0 = torch.rand(3, generator=gen) * w * 0.5
        y0 = torch.rand(3, generator=gen) * h * 0.5
        bw = torch.rand(3, generator=gen) * w * 0.4 + 8
        bh = torch.rand(3, generator=gen) * h * 0.4 + 8
        boxes = torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1)
        masks = torch.zeros(3, h, w, dtype=torch.uint8)
        for i, (a, b, c, d) in enumerate(boxes.round().long().tolist()):
            masks[i, b:d, a:c] = 1
        labels = torch.randint(1, NUM_CLASSES, (3,), generator=gen)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets


class Runner:
    """One model, its optimiser and its stage timer."""

    def __init__(self, model: nn.Module, stages: dict[str, list[nn.Module]], dtype) -> None:
        self.model = model.train()
        self.dtype = dtype
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.timer = StageTimer(stages)
        self.shares: list[dict[str, float]] = []
        self.times: list[float] = []

    def forward(self, images, targets):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            losses = self.model(images, targets)
        return sum(losses.values())

    def step(self, images, targets) -> None:
        self.timer.reset()
        start = time.perf_counter()
        loss = self.forward(images, targets)
        forward = time.perf_counter() - start
        self.optimizer.zero_grad()
        loss.backward()
        backward = time.perf_counter() - start - forward
        self.optimizer.step()
        total = time.perf_counter() - start
        parts = dict(self.timer.totals)
        parts["losses/other"] = forward - sum(parts.values())
        parts["backward"] = backward
        parts["optimiser"] = total - forward - backward
        self.times.append(total)
        self.shares.append({k: v / total for k, v in parts.items()})

    def flops(self, images, targets) -> int:
        with flop_counter() as counter:
            loss = self.forward(images, targets)
            loss.backward()
        self.optimizer.zero_grad()
        return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("demo", "r50"), default="demo")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--batch", type=int, default=None, help="images (demo 8, r50 2)")
    parser.add_argument("--reps", type=int, default=5, help="timed steps per model")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="1 rep, batch 1, ours only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    size = (192, 256) if args.model == "demo" else (800, 1333)
    batch = args.batch or (8 if args.model == "demo" else 2)
    reps = args.reps
    if args.quick:
        batch, reps = 1, 1
    images, targets = make_batch(batch, size, seed=0)
    ours = build_ours(args.model)
    runners = {"ours": Runner(ours, stages_ours(ours), dtype)}
    if not args.quick:
        tv = build_torchvision(args.model)
        runners["torchvision"] = Runner(tv, stages_torchvision(tv), dtype)
    for runner in runners.values():  # warm-up
        runner.step(images, targets)
        runner.times.clear()
        runner.shares.clear()
    peaks = {name: 0.0 for name in runners}
    for _ in range(reps):  # interleaved
        for name, runner in runners.items():
            reset_peak_rss()
            base = peak_rss_mb()
            runner.step(images, targets)
            peaks[name] = max(peaks[name], peak_rss_mb() - base)
    rate = matmul_rate(dtype)
    print(
        f"model {args.model}, {args.precision}, batch {batch} at {size[0]}x{size[1]}, {reps} reps"
    )
    print(f"{args.precision} matmul rate: {rate / 1e9:.0f} GFLOP/s")
    print()
    print("| model | step ms (median) | steps/s | GFLOP fwd+bwd | floor ms | x floor | peak MB |")
    print("|---|---|---|---|---|---|---|")
    medians = {}
    for name, runner in runners.items():
        flops = runner.flops(images, targets)
        med = statistics.median(runner.times)
        medians[name] = med
        floor = flops / rate
        print(
            f"| {name} | {med * 1000:.0f} | {1 / med:.2f} | {flops / 1e9:.1f} | "
            f"{floor * 1000:.0f} | {med / floor:.2f} | {peaks[name]:.0f} |"
        )
    if "torchvision" in medians:
        print(f"\nours: {medians['torchvision'] / medians['ours']:.2f}x torchvision's steps/s")
    print("\n| stage | " + " | ".join(runners) + " |")
    print("|---|" + "---|" * len(runners))
    names = list(next(iter(runners.values())).shares[0])
    for stage in names:
        cells = [
            f"{100 * statistics.median(s.get(stage, 0.0) for s in r.shares):.1f}%"
            for r in runners.values()
        ]
        print(f"| {stage} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
