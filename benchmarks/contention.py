"""A demo-model training step idle and beside a busy neighbour, under two OpenMP wait policies.

    python benchmarks/contention.py                 # ~2 minutes on 2 cores
    python benchmarks/contention.py --steps 3       # quicker, noisier

torch's CPU kernels run on GNU OpenMP (libgomp). For each policy (libgomp's default, which
spins a while at every barrier before sleeping, and ``OMP_WAIT_POLICY=PASSIVE``, which sleeps
at once) a fresh subprocess (the policy is read when OpenMP starts) builds the demo's model
(the ``cpu-small`` recipe's, bf16 autocast, batch 8 at 192x256) and times training steps
three ways: idle, beside one busy-looping process at nice 19, and beside one at nice 0 (one of
the two cores taken). It prints the median step time of each and its ratio to idle: with one
core taken, a step should cost at most about 2x its idle time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

POLICIES = {"default": None, "passive": "PASSIVE"}
NEIGHBOURS = {"idle": None, "nice 19": 19, "nice 0": 0}


def child(steps: int, threads: int) -> None:
    """Times ``steps`` training steps after two warm-up steps; prints them as JSON."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from training import build_ours, make_batch  # the training benchmark's model and batch

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = build_ours("demo").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, targets = make_batch(8, (192, 256), seed=0)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    print(json.dumps(times))


def busy_neighbour(nice: int) -> subprocess.Popen[bytes]:
    """A process that spins on one core at the given niceness."""
    return subprocess.Popen(
        [sys.executable, "-c", f"import os; os.nice({nice}); exec('while True: pass')"]
    )


def measure(policy: str | None, neighbour: int | None, steps: int, threads: int) -> list[float]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    other = busy_neighbour(neighbour) if neighbour is not None else None
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--steps", str(steps), "--threads", str(threads)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        if other is not None:
            other.kill()
            other.wait()
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per condition")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.steps, args.threads)
        return
    print(f"{os.cpu_count()} cores, {args.threads} torch threads, {args.steps} steps each\n")
    print("| OpenMP wait policy | neighbour | median step (s) | vs idle |")
    print("|---|---|---:|---:|")
    for name, policy in POLICIES.items():
        idle = None
        for label, nice in NEIGHBOURS.items():
            median = statistics.median(measure(policy, nice, args.steps, args.threads))
            idle = median if idle is None else idle
            print(f"| {name} | {label} | {median:.3f} | {median / idle:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
