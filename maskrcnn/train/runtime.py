"""The machinery around a training loop: processes, devices, precision, stopping, data, logs.

* :func:`init_distributed` joins the ``torchrun`` process group (RANK / WORLD_SIZE in the
  environment): NCCL on CUDA, Gloo on the CPU.
* :func:`resolve_device` and :func:`autocast_for` pick the device and mixed precision.
* :class:`StopSignals` turns SIGINT/SIGTERM into a request to stop after the current step
  (a second Ctrl-C interrupts at once).
* :class:`TrainData` iterates the training loader epoch after epoch and can start in the
  middle of an epoch without loading the skipped images.
* :class:`MetricsWriter` appends ``metrics.jsonl`` lines and, when TensorBoard is installed,
  event files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

logger = logging.getLogger("maskrcnn.train")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 without ``torch.distributed``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True: we initialised the process group and destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(use_cuda: bool) -> DistInfo:
    """Joins the process group described by the environment (``torchrun`` sets it).

    Nothing happens without ``WORLD_SIZE`` > 1. An already initialised group is used as is.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", rank)), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {missing} not set (launch with torchrun)")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, True)


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``"auto"`` -> this rank's GPU if CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available (use --device cpu)")
        if name == "cuda":
            name = f"cuda:{info.local_rank if info.distributed else torch.cuda.current_device()}"
    return torch.device(name)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting on a device (None: full precision)."""
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "bf16"
    if mode == "none":
        return None
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("amp 'fp16' needs CUDA; use 'bf16' (or 'auto') on the CPU")
        return torch.float16
    return torch.bfloat16


def autocast_for(dtype: torch.dtype | None, device: torch.device) -> Any:
    """A context manager: ``torch.autocast`` with ``dtype``, or nothing for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_step(seed: int, rank: int, iteration: int) -> None:
    """Seeds ``random``, NumPy and torch (all devices) for one step of one rank.

    Every step's randomness (e.g. the RPN and RoI sampling) is then a function of
    ``(seed, rank, iteration)``: a resumed run draws the same numbers as an uninterrupted
    one whatever happened in between (evaluation, loader restarts).
    """
    state = np.random.SeedSequence([seed, rank, iteration]).generate_state(2, dtype=np.uint64)
    value = int(state[0]) >> 1
    random.seed(value)
    np.random.seed(int(state[1]) % 2**32)
    torch.manual_seed(value)


class StopSignals:
    """SIGINT / SIGTERM set :attr:`requested`; a second SIGINT raises KeyboardInterrupt.

    Use as a context manager; the previous handlers come back on exit. Outside the main
    thread nothing is installed.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning(
            "%s received: stopping after this step (checkpoint is saved; Ctrl-C again to "
            "abort at once)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class ResumableBatches(Sampler[list[Any]]):
    """Wraps a batch sampler so that the next pass starts ``skip`` batches in.

    The wrapped sampler still produces the skipped batches (indices and seeds only, which is
    cheap), so per-sample seeds that count positions from the start of the epoch stay right.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list[Any]]:
        skip, self.skip = self.skip, 0
        batches = iter(self.inner)
        for _ in range(skip):
            if next(batches, None) is None:
                return
        yield from batches


def resumable_loader(loader: DataLoader) -> tuple[DataLoader, ResumableBatches]:
    """The same loader (dataset, workers, collate, seeding) over a :class:`ResumableBatches`."""
    batches = ResumableBatches(loader.batch_sampler)
    workers = loader.num_workers
    rebuilt = DataLoader(
        loader.dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers if workers > 0 else False,
        pin_memory=loader.pin_memory,
        prefetch_factor=loader.prefetch_factor if workers > 0 else None,
        timeout=loader.timeout,
        multiprocessing_context=loader.multiprocessing_context,
    )
    return rebuilt, batches


class TrainData:
    """Batches epoch after epoch; the position (epoch, batch within it) is the data state."""

    def __init__(self, loader: DataLoader, *, epoch: int = 0, batch: int = 0) -> None:
        self.loader, self.batches = resumable_loader(loader)
        self.epoch = epoch
        self.batch = batch
        self._iterator: Iterator[Any] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.batches)

    def next(self) -> Any:
        """The next batch (starting a new epoch when one runs out)."""
        for _ in range(2):
            if self._iterator is None:
                self.batches.set_epoch(self.epoch)
                self.batches.skip = self.batch
                self._iterator = iter(self.loader)
            try:
                item = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.epoch, self.batch = self.epoch + 1, 0
                continue
            self.batch += 1
            return item
        raise RuntimeError("the training loader yields no batch (is the dataset empty?)")

    def state(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "batches_per_epoch": self.batches_per_epoch,
        }


class MetricsWriter:
    """Rank 0's ``metrics.jsonl`` (one JSON object per line) and optional TensorBoard events."""

    def __init__(self, run_dir: Path, *, enabled: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb: Any = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard is optional (ImportError without it)
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def truncate_after(self, iteration: int) -> None:
        """Drops lines of steps after ``iteration`` (written by a run that was then killed)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if isinstance(row, dict) and int(row.get("iter", 0)) <= iteration:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self._tb is not None:
            prefix = "eval" if row.get("type") == "eval" else "train"
            for key, value in row.items():
                if key not in ("iter", "type") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{key}", value, row["iter"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
