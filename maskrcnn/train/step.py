"""One optimisation step: forward under autocast, agree across ranks, backward, clip, update.

Before the backward pass every rank shares its losses and three flags (non-finite loss,
stop signal, time budget spent) in one all-reduce, so that all ranks skip, step or stop
together. A skipped step leaves the weights and the optimizer state untouched: that includes
an update that makes a weight or the optimizer state non-finite (say ``lr`` NaN, or an
overflow), which is rolled back from a copy taken before the update and counted as skipped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from maskrcnn.modeling.precision import ResolvedPrecision, autocast
from maskrcnn.train.distributed import DistInfo


@dataclass
class StepOutcome:
    """What one step did.

    Attributes:
        names: ``loss_total`` and the model's loss names.
        values: their values, averaged over ranks (NaN when the step was skipped).
        skipped: the loss, the gradient or the updated weights were not finite (on some rank);
            nothing changed (an update that made weights non-finite was rolled back).
        stop_signal: some rank received SIGINT/SIGTERM.
        out_of_time: some rank's wall-clock budget is spent.
    """

    names: list[str]
    values: list[float]
    skipped: bool
    stop_signal: bool
    out_of_time: bool


class StepRunner:
    """Runs steps of ``model`` (possibly DDP-wrapped) with ``optimizer``.

    Args:
        model: called as ``model(images, targets)`` -> dict of scalar losses.
        optimizer: the optimizer.
        device: where the batch goes.
        info: the process group membership.
        precision: the resolved precision (``resolve_precision``): fp32, bf16 or fp16.
        scaler: a GradScaler for fp16, or None.
        clip_grad_norm: maximum global gradient norm, or None.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        info: DistInfo,
        precision: ResolvedPrecision = "fp32",
        scaler: torch.amp.GradScaler | None = None,
        clip_grad_norm: float | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.info = info
        self.precision = precision
        self.scaler = scaler
        self.clip = clip_grad_norm

    def __call__(
        self, batch: Any, *, stop_requested: Callable[[], bool], deadline: float | None
    ) -> StepOutcome:
        """One step on ``batch`` = (images, targets, ids).

        Args:
            batch: (images, targets, image ids) from the loader.
            stop_requested: asked after the forward pass (has a stop signal arrived?).
            deadline: ``time.monotonic()`` at which the time budget is spent, or None.
        """
        images, targets, _ = batch
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [t.to(self.device) for t in targets]
        with autocast(self.precision, self.device):
            losses = self.model(images, targets)
        names = ["loss_total", *losses]
        total = sum(losses.values())
        report = torch.stack(
            [total.detach().float(), *(v.detach().float() for v in losses.values())]
        )
        out_of_time = deadline is not None and time.monotonic() >= deadline
        finite = bool(torch.isfinite(report).all())
        flags = torch.tensor([float(not finite), float(stop_requested()), float(out_of_time)])
        if self.info.distributed:
            shared = torch.cat([torch.nan_to_num(report.cpu(), 0.0, 0.0, 0.0), flags])
            shared = shared.to(self.device) if self.device.type == "cuda" else shared
            dist.all_reduce(shared)
            shared = shared.cpu()
            report, flags = shared[: len(names)] / self.info.world_size, shared[len(names) :]
        skipped = bool(flags[0] > 0)
        self.optimizer.zero_grad(set_to_none=True)
        if skipped:
            if self.info.distributed:  # every rank runs the backward DDP expects, then drops it
                (total * 0.0).backward()
                self.optimizer.zero_grad(set_to_none=True)
        else:
            skipped = not self._update(total)
        return StepOutcome(
            names=names,
            values=[math.nan] * len(names) if skipped else report.tolist(),
            skipped=skipped,
            stop_signal=bool(flags[1] > 0),
            out_of_time=bool(flags[2] > 0),
        )

    def _update(self, total: torch.Tensor) -> bool:
        """Backward, clip, step; False when skipped for a non-finite gradient norm."""
        scaler = self.scaler
        (scaler.scale(total) if scaler is not None else total).backward()
        if self.clip is not None:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip)
            if scaler is None and not bool(torch.isfinite(norm)):
                self.optimizer.zero_grad(set_to_none=True)
                return False
        saved = _OptimizerSnapshot(self.optimizer)
        if scaler is not None:  # the scaler skips steps with inf/NaN gradients by itself
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        finite = saved.all_finite()
        if self.info.distributed:  # every rank rolls back if any rank's update blew up
            flag = torch.tensor([float(not finite)], device=self.device)
            dist.all_reduce(flag)
            finite = not bool(flag.item() > 0)
        if not finite:
            saved.restore()
            self.optimizer.zero_grad(set_to_none=True)
            return False
        return True


class _OptimizerSnapshot:
    """A copy of an optimizer's parameters and state, to roll back a non-finite update."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.values = [p.detach().clone() for p in self.params]
        self.state = {p: _clone_state(optimizer.state[p]) for p in self.params}

    def all_finite(self) -> bool:
        """Every parameter and floating-point state tensor is finite."""
        tensors = [p.detach() for p in self.params]
        for p in self.params:
            tensors.extend(
                v
                for v in self.optimizer.state[p].values()
                if torch.is_tensor(v) and v.is_floating_point()
            )
        if not tensors:
            return True
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def restore(self) -> None:
        """Puts the parameters and the state back as they were at construction."""
        with torch.no_grad():
            for p, value in zip(self.params, self.values):
                p.copy_(value)
        for p in self.params:
            if self.state[p]:
                self.optimizer.state[p] = self.state[p]
            else:
                self.optimizer.state.pop(p, None)


def _clone_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in state.items()}
