"""torchvision's Mask R-CNN on the demo's data, with the demo's budget and backbone.

Trains ``torchvision.models.detection.MaskRCNN`` with a ResNet-18-FPN backbone from scratch
(trainable BatchNorm, no ImageNet weights: none are reachable offline), the demo's anchors,
sampling sizes, input size, optimiser, schedule and precision (bf16 autocast), for the same
wall-clock budget, on the same shapes set and augmentation, then measures box and mask AP with
pycocotools' COCOeval.
torchvision's FPN and box head keep their fixed widths (256 channels, 1024-wide FC layers);
the demo's model is slimmer (128 / 512).

    python benchmarks/demo_vs_torchvision.py --data out/demo/shapes --minutes 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from pycocotools.cocoeval import COCOeval
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from maskrcnn.data.annotations import encode_binary_mask
from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.loader import build_train_loader
from maskrcnn.data.transforms import train_transforms
from maskrcnn.demo import DemoSettings
from maskrcnn.modeling.modes import eval_mode
from maskrcnn.modeling.precision import autocast, resolve_precision
from maskrcnn.train.recipes import CPU_SMALL


def build_reference(num_classes: int) -> MaskRCNN:
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
    )
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5)
    return MaskRCNN(
        backbone,
        num_classes=num_classes,
        min_size=192,
        max_size=256,
        rpn_anchor_generator=anchors,
        rpn_batch_size_per_image=128,
        rpn_pre_nms_top_n_train=500,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=128,
    )


def evaluate(model: MaskRCNN, val: CocoDataset) -> dict[str, float]:
    results = []
    with eval_mode(model), torch.inference_mode():
        for i in range(len(val)):
            sample = val[i]
            out = model([sample.image])[0]
            for box, score, label, mask in zip(
                out["boxes"], out["scores"], out["labels"], out["masks"]
            ):
                rle = encode_binary_mask((mask[0] >= 0.5).numpy())
                x0, y0, x1, y1 = box.tolist()
                results.append(
                    {
                        "image_id": sample.image_id,
                        "category_id": val.categories.category_id(int(label)),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(score),
                        "segmentation": rle,
                    }
                )
    stats = {}
    for kind in ("bbox", "segm"):
        if not results:
            stats[f"{kind}_AP"] = 0.0
            continue
        dets = val.coco.loadRes([dict(r) for r in results])
        evaluator = COCOeval(val.coco, dets, kind)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        stats[f"{kind}_AP"] = float(evaluator.stats[0])
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="shapes folder (train.json, val.json)")
    parser.add_argument("--minutes", type=float, default=DemoSettings.max_minutes)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--lr", type=float, default=CPU_SMALL.optim.base_lr, help="learning rate")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default=CPU_SMALL.optim.kind)
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default=CPU_SMALL.precision
    )  # resolved as the demo does: fp32 (with a warning) on CPUs without fast bf16
    args = parser.parse_args()
    settings = DemoSettings()
    recipe, schedule = settings.recipe, settings.recipe.schedule
    precision = resolve_precision(args.precision, torch.device("cpu"))
    torch.manual_seed(settings.seed)
    data = Path(args.data)
    train_set = CocoDataset(
        data / "train.json", data / "images", transforms=train_transforms((192,), 256)
    )
    val = CocoDataset(data / "val.json", data / "images")
    model = build_reference(train_set.categories.num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=recipe.optim.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    milestones = [int(f * schedule.max_iter) for f in schedule.lr_steps]

    def factor(step: int) -> float:
        warm = min(1.0, 0.001 + (1 - 0.001) * step / schedule.warmup_iters)
        return warm * 0.1 ** sum(step >= m for m in milestones)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    loader = build_train_loader(
        train_set,
        batch_size=recipe.batch_size,
        num_workers=settings.workers,
        seed=settings.seed,
        infinite=True,
    )
    model.train()
    start, step = time.perf_counter(), 0
    for images, gts, _ in loader:
        targets = [
            {"boxes": g.boxes, "labels": g.labels, "masks": g.masks.to(torch.uint8)} for g in gts
        ]
        with autocast(precision, torch.device("cpu")):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        if step % 20 == 0:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)
        if not torch.isfinite(loss):
            raise SystemExit(f"diverged at step {step} (lr {args.lr}): non-finite loss")
        if step >= schedule.max_iter or time.perf_counter() - start > args.minutes * 60:
            break
    minutes = (time.perf_counter() - start) / 60
    stats = evaluate(model, val)
    report = {
        "optimizer": args.optimizer,
        "precision": precision,
        "lr": args.lr,
        "steps": step,
        "minutes": round(minutes, 2),
        **stats,
    }
    print(json.dumps(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
