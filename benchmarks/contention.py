"""A demo-model training step idle and beside a busy neighbour: fixed threads vs the project's.

    python benchmarks/contention.py                 # ~4 minutes on 2 cores
    python benchmarks/contention.py --steps 3       # quicker, noisier

torch's CPU kernels run on GNU OpenMP (libgomp). A fresh subprocess (OpenMP reads its wait
policy when it starts) builds the demo's model (the ``cpu-small`` recipe's, bf16 autocast,
batch 8 at 192x256) and times training steps idle, beside one busy-looping process at nice 19,
and beside one at nice 0 (one of the two cores taken), for three set-ups:

- ``fixed``: one thread per core and libgomp's default wait policy (what torch does alone,
  and what the project did before :mod:`maskrcnn.train.threads`);
- ``passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once);
- ``project``: :class:`~maskrcnn.train.threads.ThreadGovernor` as training uses it (thread
  count from the idle cores at start-up, re-measured between steps).

and, for ``fixed`` and ``project``, a neighbour that arrives after the run has started
(``nice 0, later``: the governor has to notice it). It prints the median step time of each and
its ratio to that set-up's idle time: with one core taken, a step should cost at most about
2.2x its idle time.
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

# set-up -> (OMP_WAIT_POLICY, thread governor)
SETUPS = {"fixed": (None, False), "passive": ("PASSIVE", False), "project": (None, True)}
# neighbour -> (niceness, arrives after the run started)
NEIGHBOURS = {
    "idle": None,
    "nice 19": (19, False),
    "nice 0": (0, False),
    "nice 0, later": (0, True),
}
SETTLE_STEPS = 4  # steps not timed after a late neighbour arrived (the governor's reaction)


def child(steps: int, threads: int, governed: bool, late: bool) -> None:
    """Times ``steps`` training steps after two warm-up steps; prints them as JSON.

    With ``late``, prints "warm" after the warm-up and waits for a line on stdin (the parent
    starts the neighbour then), and leaves the next :data:`SETTLE_STEPS` steps untimed.
    """
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from training import build_ours, make_batch  # the training benchmark's model and batch

    from maskrcnn.train.threads import ThreadGovernor

    torch.manual_seed(0)
    governor = None
    if governed:
        governor = ThreadGovernor(period_seconds=2.0)
        print(f"governor: {governor.start().describe()}", file=sys.stderr)
    else:
        torch.set_num_threads(threads)
    model = build_ours("demo").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, targets = make_batch(8, (192, 256), seed=0)
    times = []
    untimed = 2 + (SETTLE_STEPS if late else 0)
    for i in range(steps + untimed):
        if late and i == 2:
            print("warm", flush=True)
            sys.stdin.readline()
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= untimed:
            times.append(time.perf_counter() - start)
        if governor is not None and (change := governor.poll()) is not None:
            print(f"governor, step {i}: {change.describe()}", file=sys.stderr)
    print(json.dumps(times), flush=True)


def busy_neighbour(nice: int) -> subprocess.Popen[bytes]:
    """A process that spins on one core at the given niceness."""
    return subprocess.Popen(
        [sys.executable, "-c", f"import os; os.nice({nice}); exec('while True: pass')"]
    )


def measure(
    setup: str, neighbour: tuple[int, bool] | None, steps: int, threads: int
) -> tuple[list[float], str]:
    """The step times of one set-up beside one neighbour, and the governor's log lines."""
    policy, governed = SETUPS[setup]
    late = neighbour is not None and neighbour[1]
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    other = busy_neighbour(neighbour[0]) if neighbour is not None and not late else None
    command = [sys.executable, __file__, "--child", "--steps", str(steps)]
    command += ["--threads", str(threads)] + (["--governed"] if governed else [])
    command += ["--late"] if late else []
    child_process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child_process.stdin is not None and child_process.stdout is not None
        if late:
            assert child_process.stdout.readline().strip() == "warm"
            assert neighbour is not None
            other = busy_neighbour(neighbour[0])
            child_process.stdin.write("go\n")
            child_process.stdin.flush()
        out, err = child_process.communicate()
    finally:
        if other is not None:
            other.kill()
            other.wait()
    if child_process.returncode:
        raise RuntimeError(f"the timed process failed:\n{err}")
    log = "; ".join(line for line in err.splitlines() if line.startswith("governor"))
    return json.loads(out.strip().splitlines()[-1]), log


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per condition")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads")
    p.add_argument("--setup", choices=SETUPS, action="append", help="only these (repeatable)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--governed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--late", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.steps, args.threads, args.governed, args.late)
        return
    print(f"{os.cpu_count()} cores, fixed: {args.threads} torch threads, {args.steps} steps each\n")
    print("| set-up | neighbour | median step (s) | vs idle | threads |")
    print("|---|---|---:|---:|---|")
    for setup in args.setup or list(SETUPS):
        idle = None
        for label, neighbour in NEIGHBOURS.items():
            if neighbour is not None and neighbour[1] and setup == "passive":
                continue
            times, log = measure(setup, neighbour, args.steps, args.threads)
            median = statistics.median(times)
            idle = median if idle is None else idle
            row = f"| {setup} | {label} | {median:.3f} | {median / idle:.2f}x | {log or '-'} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
