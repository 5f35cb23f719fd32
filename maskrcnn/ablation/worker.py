"""One ablation run in its own process: ``python -m maskrcnn.ablation.worker RUN_DIR --cpu N``.

Pins the process to core N with one thread (``torch.set_num_threads(1)``) and runs
:func:`maskrcnn.ablation.sweep.run_one` on the folder's ``spec.json``. With ``--parent PID`` it
gets a SIGTERM when that process dies (the trainer then checkpoints and stops). Exit code 0 when the
run finished or failed (its ``result.json`` says which), 130 when it was interrupted.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _stop_with_parent(parent: int) -> None:
    """Asks Linux for a SIGTERM when the sweep process dies (even by SIGKILL), so that the run
    checkpoints and stops instead of running on unsupervised; exits if it is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the run simply outlives a killed sweep
        return
    if os.getppid() != parent:
        sys.exit(130)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskrcnn.ablation.worker")
    parser.add_argument("run_dir")
    parser.add_argument("--cpu", type=int, default=None, help="the core to pin the run to")
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("--parent", type=int, default=None, help="the sweep's process id")
    args = parser.parse_args(argv)
    if args.parent is not None:
        _stop_with_parent(args.parent)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from maskrcnn.ablation.sweep import INTERRUPTED_EXIT, run_one

    record = run_one(args.run_dir, keep_checkpoints=args.keep_checkpoints)
    print(f"{args.run_dir}: {record.status}", flush=True)
    return INTERRUPTED_EXIT if record.status == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
