"""Inference latency and memory: ours vs torchvision's maskrcnn_resnet50_fpn, same weights.

Both models hold the same random weights (torchvision's, randomised, converted with
``from_torchvision``), see the same 640x480 picture (resized to 800x1066 inside the models)
with ``box_score_thresh=0`` so that 100 detections go through the mask head, and run
interleaved in one process. Prints median latency, peak RSS during a call (Linux VmHWM, reset
before each call), the share of time per stage, and the FLOP floor: the model's FLOPs
(torch.utils.flop_counter) divided by this machine's measured matrix-multiply rate.

    python benchmarks/inference.py [--reps 7] [--threads 2] [--bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn

from maskrcnn import from_torchvision
from maskrcnn.modeling.randomize import randomize_


def reset_peak_rss() -> None:
    """Resets the kernel's peak-RSS counter of this process (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class StageTimer:
    """Accumulates wall time spent inside named modules (forward hooks)."""

    def __init__(self, stages: dict[str, list[nn.Module]]) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._start: dict[int, float] = {}
        for name, modules in stages.items():
            for module in modules:
                module.register_forward_pre_hook(self._pre)
                module.register_forward_hook(self._post(name))

    def _pre(self, module, args):
        self._start[id(module)] = time.perf_counter()

    def _post(self, name):
        def hook(module, args, output):
            self.totals[name] += time.perf_counter() - self._start.pop(id(module))

        return hook

    def add(self, name: str, seconds: float) -> None:
        self.totals[name] += seconds

    def reset(self) -> None:
        self.totals.clear()


def our_stages(model) -> dict[str, list[nn.Module]]:
    """Our model's modules grouped by pipeline stage."""
    heads = model.roi_heads
    return {
        "backbone": [model.backbone.bottom_up],
        "fpn": [model.backbone.fpn],
        "rpn": [model.rpn],
        "box head": [heads.box_pooler, heads.box_head, heads.box_predictor],
        "mask head": [heads.mask_pooler, heads.mask_head],
        "paste": [model.postprocessor],  # boxes to the image frame, masks pasted
    }


def trained_agreement(model_path: str, image_dir: str, limit: int = 40) -> str:
    """bf16 vs fp32 mask IoU of a trained model's confident (score >= 0.5) detections."""
    from maskrcnn import load_model
    from maskrcnn.data.io import load_image

    fp32 = load_model(model_path).set_precision("fp32")
    bf16 = load_model(model_path).set_precision("bf16")
    files = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in {".png", ".jpg"})
    weighted, matched, total = 0.0, 0, 0
    with torch.no_grad():
        for path in files[:limit]:
            image = load_image(path)
            a, b = fp32([image])[0], bf16([image])[0]
            keep = a["scores"] >= 0.5
            a = {k: v[keep] for k, v in a.items()}
            iou, n = mask_agreement(a, b)
            total += int(keep.sum())
            matched += n
            weighted += iou * n if n else 0.0
    mean = weighted / matched if matched else float("nan")
    return (
        f"trained model {model_path}: bf16 matched {matched}/{total} confident fp32 "
        f"detections, mean mask IoU {mean:.4f}"
    )


def timed(fn, timer: StageTimer, name: str):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timer.add(name, time.perf_counter() - start)

    return wrapper


def _median_seconds(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(dtype: torch.dtype) -> float:
    """The machine's best measured matrix-multiply rate in ``dtype`` (FLOP/s).

    Two GEMM back ends are tried: ``torch.mm`` (MKL/OpenBLAS) on 4096^2 matrices and oneDNN's,
    reached through a 1x1 convolution in channels-last (a [4096 x 1024] x [1024 x 1024]
    product). On AMD CPUs MKL's sgemm runs far below oneDNN's, so the best of the two is the
    honest rate; the model's convolutions use oneDNN.
    """
    a = torch.randn(4096, 4096).to(dtype)
    x = torch.randn(1, 1024, 64, 64).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(1024, 1024, 1, 1).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        mm = 2 * 4096**3 / _median_seconds(lambda: a @ a)
        onednn = 2 * 1024 * 1024 * 4096 / _median_seconds(lambda: torch.conv2d(x, w))
    return max(mm, onednn)


def _fused_conv_flops(*args, out_shape=None, **kwargs) -> int:
    """mkldnn::_convolution_pointwise (X, W, B, ...) and its .binary (X, other, W, B, ...)."""
    from torch.utils.flop_counter import conv_flop_count

    x, second, third = args[:3]
    weight = third if third is not None and len(third) == 4 else second  # binary: W third
    return conv_flop_count(list(x), list(weight), list(out_shape))


def _fused_linear_flops(x, weight, *args, out_shape=None, **kwargs) -> int:
    """mkldnn::_linear_pointwise (X [..., K], W [N, K], ...): 2 * rows * K * N."""
    rows = 1
    for size in x[:-1]:
        rows *= size
    return 2 * rows * x[-1] * weight[0]


def flop_counter():
    """``FlopCounterMode`` that also counts our fused oneDNN ops (conv + add + ReLU,
    ``maskrcnn.modeling.layers.conv_relu``; linear + ReLU, ``linear_relu``), which it has no
    formula for."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {
        torch.ops.mkldnn._convolution_pointwise: _fused_conv_flops,
        torch.ops.mkldnn._linear_pointwise: _fused_linear_flops,
    }
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(model: nn.Module, images: list[torch.Tensor]) -> int:
    with flop_counter() as counter, torch.no_grad():
        model(images)
    return counter.get_total_flops()


STAGES = ["backbone", "fpn", "rpn", "box head", "mask head", "paste"]


def mask_agreement(a: dict, b: dict) -> tuple[float, int]:
    """Greedy matching of b's detections to a's (same label, box IoU > 0.5, best first);
    returns the mean IoU of the binarised (>= 0.5) masks of matched pairs and their count."""
    from torchvision.ops import box_iou

    iou = box_iou(a["boxes"], b["boxes"])
    iou[a["labels"][:, None] != b["labels"][None, :]] = 0
    used: set[int] = set()
    ious = []
    for i in range(len(a["boxes"])):
        order = iou[i].argsort(descending=True).tolist()
        j = next((j for j in order if j not in used and iou[i, j] > 0.5), None)
        if j is None:
            continue
        used.add(j)
        ma, mb = a["masks"][i, 0] >= 0.5, b["masks"][j, 0] >= 0.5
        union = (ma | mb).sum().item()
        ious.append((ma & mb).sum().item() / union if union else 1.0)
    return (sum(ious) / len(ious) if ious else float("nan")), len(ious)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--trained",
        nargs=2,
        metavar=("MODEL", "IMAGES"),
        help="also compare bf16 with fp32 on a trained model file over a folder of images",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    kwargs = dict(box_score_thresh=0.0)
    torch.manual_seed(0)
    reference = randomize_(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs))
    reference.eval()
    ours = from_torchvision(reference.state_dict(), "v1", norm_eps=1e-5, **kwargs)
    image = torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(1))
    images = [image]

    ref_timer = StageTimer(
        {
            "backbone": [reference.backbone.body],
            "fpn": [reference.backbone.fpn],
            "rpn": [reference.rpn],
            "box head": [
                reference.roi_heads.box_roi_pool,
                reference.roi_heads.box_head,
                reference.roi_heads.box_predictor,
            ],
            "mask head": [
                reference.roi_heads.mask_roi_pool,
                reference.roi_heads.mask_head,
                reference.roi_heads.mask_predictor,
            ],
        }
    )
    reference.transform.postprocess = timed(reference.transform.postprocess, ref_timer, "paste")
    our_timer = StageTimer(our_stages(ours))
    ours_bf16 = from_torchvision(reference.state_dict(), "v1", norm_eps=1e-5, **kwargs)
    ours_bf16.set_precision("bf16")
    bf16_timer = StageTimer(our_stages(ours_bf16))
    runners = {
        "torchvision": (reference, ref_timer),
        "ours": (ours, our_timer),
        "ours bf16": (ours_bf16, bf16_timer),
    }
    with torch.no_grad():
        for model, _ in runners.values():  # warm-up
            model(images)
    times: dict[str, list[float]] = defaultdict(list)
    peaks: dict[str, list[float]] = defaultdict(list)
    for timer in (ref_timer, our_timer, bf16_timer):
        timer.reset()
    with torch.no_grad():
        for _ in range(args.reps):
            for name, (model, _) in runners.items():
                base = current_rss_mb()
                reset_peak_rss()
                start = time.perf_counter()
                out = model(images)
                times[name].append(time.perf_counter() - start)
                peaks[name].append(peak_rss_mb() - base)
                assert len(out[0]["boxes"]) == 100
                del out

    # The stage totals of the timed runs alone (the checks below run the models again).
    stage_totals = {name: dict(timer.totals) for name, (_, timer) in runners.items()}

    # Counted on torchvision's model: the same network (ours counts the same 461.6 G with
    # flop_counter's formulas for our fused oneDNN ops).
    flops = count_flops(reference, images)
    rate = matmul_rate(torch.float32)
    rate_bf16 = matmul_rate(torch.bfloat16)
    floor = flops / rate
    floors = {"torchvision": floor, "ours": floor, "ours bf16": flops / rate_bf16}
    print("# Mask R-CNN R50-FPN inference, 640x480 -> 800x1066, 100 detections, fp32")
    print(f"CPU threads: {torch.get_num_threads()}; torch {torch.__version__}; reps {args.reps}")
    print(f"model FLOPs: {flops / 1e9:.1f} G; fp32 matmul rate: {rate / 1e9:.0f} GFLOP/s")
    print(f"bf16 matmul rate: {rate_bf16 / 1e9:.0f} GFLOP/s")
    print(
        f"floor (FLOPs / matmul rate): fp32 {floor * 1000:.0f} ms, "
        f"bf16 {floors['ours bf16'] * 1000:.0f} ms\n"
    )
    print("| implementation | median latency (ms) | x its floor | peak extra RSS (MB) |")
    print("|---|---|---|---|")
    for name in runners:
        med = statistics.median(times[name])
        print(
            f"| {name} | {med * 1000:.0f} | {med / floors[name]:.2f} | "
            f"{statistics.median(peaks[name]):.0f} |"
        )
    for name in ("ours", "ours bf16"):
        ratio = statistics.median(times["torchvision"]) / statistics.median(times[name])
        print(f"speed-up (torchvision fp32 / {name}): {ratio:.2f}x")
    with torch.no_grad():
        fp32_out = ours(images)[0]
        bf16_out = ours_bf16(images)[0]
        ref_out = reference(images)[0]
    iou, matched = mask_agreement(fp32_out, bf16_out)
    print(f"bf16 vs our fp32: {matched}/100 detections matched (same label, box IoU > 0.5), ")
    print(f"mean mask IoU {iou:.4f}")
    if args.trained:
        print(trained_agreement(*args.trained))
    iou_tv, matched_tv = mask_agreement(ref_out, fp32_out)
    print(f"our fp32 vs torchvision: {matched_tv}/100 matched, mean mask IoU {iou_tv:.4f}\n")
    print("| stage | " + " | ".join(runners) + " |")
    print("|---|" + "---|" * len(runners))
    for stage in STAGES:
        cells = []
        for name in runners:
            total, spent = sum(times[name]), stage_totals[name].get(stage, 0.0)
            cells.append(f"{spent / args.reps * 1000:.0f} ms ({100 * spent / total:.0f}%)")
        print(f"| {stage} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
