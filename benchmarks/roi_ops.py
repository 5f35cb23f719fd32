"""Times maskrcnn.ops against torchvision's CPU kernels on a P2-sized FPN level.

Setting: features [1, 256, 200, 272] (P2 of an 800x1088 image, spatial_scale 0.25), 1000 RoIs
with realistic sizes (fixed seed), RoIAlign with sampling_ratio 2 and aligned=True at 7x7 and
14x14, RoIPool at 7x7; forward (no autograd) and forward+backward (backward of a fixed random
grad_output, input.grad allocated by autograd). Each repetition runs ours and torchvision's
back to back (interleaved), and the table reports medians. Threads: torch's default (set
``--threads`` to change). Run: ``python benchmarks/roi_ops.py [--reps N] [--no-memory]``.

Contention: other processes on the same cores slow both implementations, ours more (its work
is many short 2-thread parallel regions; torchvision's kernel is single-threaded). Before each
case the script waits (``--wait-idle`` seconds at most) for the other processes to go quiet,
and the last column reports how many CPUs they kept busy while the row was timed; a case
timed under contention is re-run (``--retries``) and the least contended attempt is kept.

Peak memory: torch's CPU allocations are invisible to tracemalloc and torch keeps no CPU
allocator statistics, so every (op, implementation, pass) is run once in a fresh subprocess,
and the peak resident set size (VmHWM from /proc/self/status) is compared before and after the
call. The column is that increase: the op's transient peak above its inputs, which includes
the output and, for forward+backward, input.grad (both implementations pay those).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torchvision

from maskrcnn.ops import roi_align, roi_pool

IMAGE_H, IMAGE_W = 800, 1088
SCALE = 0.25
CASES = [  # (op, output size)
    ("roi_align", 7),
    ("roi_align", 14),
    ("roi_pool", 7),
]


def make_inputs(num_rois: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [1, 256, 200, 272] and [K, 5] boxes inside the image.

    Box sides: sqrt(area) log-uniform in [16, 512] px, aspect ratio log-uniform in [1/2, 2],
    centres uniform, clipped to the image.
    """
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, 256, int(IMAGE_H * SCALE), int(IMAGE_W * SCALE), generator=gen)
    side = torch.exp(torch.empty(num_rois).uniform_(math.log(16), math.log(512), generator=gen))
    ratio = torch.exp(torch.empty(num_rois).uniform_(-math.log(2), math.log(2), generator=gen))
    w, h = side * ratio.sqrt(), side / ratio.sqrt()
    cx = torch.rand(num_rois, generator=gen) * IMAGE_W
    cy = torch.rand(num_rois, generator=gen) * IMAGE_H
    boxes = torch.stack(
        [
            torch.zeros(num_rois),
            (cx - w / 2).clamp(0, IMAGE_W),
            (cy - h / 2).clamp(0, IMAGE_H),
            (cx + w / 2).clamp(0, IMAGE_W),
            (cy + h / 2).clamp(0, IMAGE_H),
        ],
        dim=1,
    )
    return feats, boxes


def make_call(
    op: str, impl: str, size: int
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The function under test, with the benchmark's fixed arguments."""
    if op == "roi_align":
        fn = torchvision.ops.roi_align if impl == "torchvision" else roi_align
        return lambda x, b: fn(x, b, size, SCALE, 2, True)
    fn = torchvision.ops.roi_pool if impl == "torchvision" else roi_pool
    return lambda x, b: fn(x, b, size, SCALE)


def run_once(call, feats, boxes, backward: bool, grad_out: torch.Tensor | None) -> None:
    """One forward (no autograd) or forward+backward."""
    if not backward:
        with torch.no_grad():
            call(feats, boxes)
        return
    x = feats.detach().requires_grad_()
    call(x, boxes).backward(grad_out)


def time_case(op: str, size: int, backward: bool, reps: int, feats, boxes) -> dict[str, float]:
    """Median seconds for ours and torchvision's, interleaved repetition by repetition."""
    calls = {impl: make_call(op, impl, size) for impl in ("torchvision", "ours")}
    grad_out = None
    if backward:
        with torch.no_grad():
            shape = calls["torchvision"](feats, boxes).shape
        grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {impl: [] for impl in calls}
    for rep in range(reps + 1):  # the first repetition is a warm-up
        for impl, call in calls.items():
            start = time.perf_counter()
            run_once(call, feats, boxes, backward, grad_out)
            if rep > 0:
                times[impl].append(time.perf_counter() - start)
    return {impl: statistics.median(t) for impl, t in times.items()}


def cpu_busy_seconds() -> float:
    """CPU time spent busy by the whole machine so far (from /proc/stat), in seconds."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def others_busy(seconds: float) -> float:
    """CPUs kept busy by other processes over the next ``seconds`` (this process is idle)."""
    busy0 = cpu_busy_seconds()
    time.sleep(seconds)
    return (cpu_busy_seconds() - busy0) / seconds


def wait_until_idle(timeout: float) -> float:
    """Waits (up to ``timeout`` s) until other processes use < 0.1 CPU; returns the last level."""
    deadline = time.monotonic() + timeout
    level = others_busy(1.0)
    while level >= 0.1 and time.monotonic() < deadline:
        level = others_busy(2.0)
    return level


def vm_hwm_bytes() -> int:
    """Peak resident set size of this process (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def measure_memory_child(op: str, impl: str, size: int, backward: bool) -> None:
    """Subprocess entry: prints the VmHWM increase caused by one call, as JSON."""
    feats, boxes = make_inputs()
    call = make_call(op, impl, size)
    grad_out = None
    if backward:
        with torch.no_grad():  # the shape from a tiny run, so no big allocation happens here
            shape = (boxes.shape[0],) + tuple(call(feats, boxes[:1]).shape[1:])
        grad_out = torch.randn(shape)
    before = vm_hwm_bytes()
    run_once(call, feats, boxes, backward, grad_out)
    print(json.dumps({"peak_bytes": vm_hwm_bytes() - before}))


def measure_memory(op: str, impl: str, size: int, backward: bool) -> float:
    """Peak RSS increase in MB of one call, run in a fresh subprocess."""
    cmd = [sys.executable, __file__, "--memory-child", op, impl, str(size), str(int(backward))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per case")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=120.0,
        help="seconds to wait before each case for other processes to leave the CPUs (0: no)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="re-runs of a case timed under contention"
    )
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        op, impl, size, backward = args.memory_child
        measure_memory_child(op, impl, int(size), bool(int(backward)))
        return

    feats, boxes = make_inputs()
    # Other processes compete for the cores and slow both implementations (ours more: it runs
    # many short parallel regions, torchvision's kernel is single-threaded), so wait for an idle
    # machine before each case and report how busy the others kept the CPUs during it.
    timings = []
    for op, size in CASES:
        for backward in (False, True):
            attempts = []
            for _ in range(1 + args.retries):  # a contended attempt is retried
                wait_until_idle(args.wait_idle)
                wall0, busy0, own0 = time.perf_counter(), cpu_busy_seconds(), sum(os.times()[:2])
                t = time_case(op, size, backward, args.reps, feats, boxes)
                own = sum(os.times()[:2]) - own0
                others = (cpu_busy_seconds() - busy0 - own) / (time.perf_counter() - wall0)
                attempts.append((max(others, 0.0), t))
                if others < 0.1:
                    break
            others, t = min(attempts, key=lambda a: a[0])  # the least contended attempt
            timings.append((op, size, backward, t, others))
    rows = []
    for op, size, backward, t, others in timings:
        mem = {}
        if not args.no_memory:
            mem = {impl: measure_memory(op, impl, size, backward) for impl in t}
        rows.append((op, size, backward, t, others, mem))
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} threads, features {tuple(feats.shape)}, "
        f"{boxes.shape[0]} RoIs, spatial_scale {SCALE}; RoIAlign sampling_ratio=2, aligned=True; "
        f"median of {args.reps} interleaved repetitions.\n"
    )
    print(
        "| op | output | pass | torchvision ms | ours ms | speed-up (tv / ours) "
        "| peak MB tv | peak MB ours | others' CPUs |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for op, size, backward, t, others, mem in rows:
        tv, ours = t["torchvision"] * 1e3, t["ours"] * 1e3
        mem_tv = f"{mem['torchvision']:.0f}" if mem else "-"
        mem_ours = f"{mem['ours']:.0f}" if mem else "-"
        kind = "fwd+bwd" if backward else "fwd"
        print(
            f"| {op} | {size}x{size} | {kind} | {tv:.1f} | {ours:.1f} | {tv / ours:.2f}x "
            f"| {mem_tv} | {mem_ours} | {others:.2f} |"
        )
    print(
        "\npeak MB: increase of the process's peak RSS (VmHWM) during one call, each measured "
        "in a fresh subprocess; includes the output (and input.grad for fwd+bwd).\n"
        f"others' CPUs: CPUs kept busy by other processes while the row was timed, out of "
        f"{os.cpu_count()}; rows with more than ~0.1 are slowed by contention (ours more than "
        "torchvision's single-threaded kernel)."
    )


if __name__ == "__main__":
    main()
