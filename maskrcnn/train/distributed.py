"""This process's place in the job, and its device.

* :func:`init_distributed` joins the ``torchrun`` process group (RANK / WORLD_SIZE in the
  environment): NCCL on CUDA, Gloo on the CPU; :func:`close_distributed` leaves it.
* :func:`resolve_device` picks this rank's device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 without ``torch.distributed``).

    Attributes:
        rank: this process's rank.
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        owns_group: True when :func:`init_distributed` created the process group (and
            :func:`close_distributed` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files."""
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


def close_distributed(info: DistInfo) -> None:
    """Destroys the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wants_cuda(device: str) -> bool:
    """Whether a ``device`` setting ("auto", "cpu", "cuda", "cuda:N") will run on CUDA."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


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


def max_over_ranks(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """The element-wise maxima of ``values`` over all ranks (``values`` itself in one process);
    every rank must call it."""
    if not info.distributed:
        return list(values)
    shared = torch.tensor(values, dtype=torch.float64)
    shared = shared.to(device) if device.type == "cuda" else shared
    dist.all_reduce(shared, op=dist.ReduceOp.MAX)
    return [float(v) for v in shared.cpu().tolist()]
