"""SGD (the Mask R-CNN recipe) or AdamW: parameter groups and an iteration-based learning rate.

The rate at step ``t`` is ``lr * warmup(t) * gamma ** (number of milestones <= t)``, with a
linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters`` steps (Goyal et al., 2017).
The schedule is a pure function of the step, so its state is the step alone.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from maskrcnn.train.config import TrainConfig


def parameter_groups(
    model: nn.Module, *, weight_decay: float, no_decay_norm_bias: bool
) -> list[dict[str, Any]]:
    """Trainable parameters, split into decayed and non-decayed groups.

    With ``no_decay_norm_bias``, 1-D parameters (biases and normalisation scales/shifts) get
    no weight decay. Frozen parameters (``requires_grad=False``) are left out.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if no_decay_norm_bias and param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    *,
    kind: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    no_decay_norm_bias: bool = False,
) -> torch.optim.Optimizer:
    """SGD with momentum, or AdamW (``momentum`` is its beta1, beta2 is 0.999), over
    :func:`parameter_groups`."""
    groups = parameter_groups(
        model, weight_decay=weight_decay, no_decay_norm_bias=no_decay_norm_bias
    )
    if not groups:
        raise ValueError("the model has no trainable parameter")
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    raise ValueError(f"unknown optimizer {kind!r}; choose 'sgd' or 'adamw'")


def build_optimization(
    model: nn.Module, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, WarmupMultiStepLR]:
    """The optimizer and learning-rate schedule of a :class:`TrainConfig` (``optim``,
    ``schedule`` and the scaled rate :attr:`TrainConfig.lr`)."""
    optimizer = build_optimizer(
        model,
        kind=cfg.optim.kind,
        lr=cfg.lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
        no_decay_norm_bias=cfg.optim.no_decay_norm_bias,
    )
    scheduler = WarmupMultiStepLR(
        optimizer,
        base_lr=cfg.lr,
        milestones=cfg.schedule.milestones(),
        gamma=cfg.schedule.gamma,
        warmup_iters=cfg.schedule.warmup_iters,
        warmup_factor=cfg.schedule.warmup_factor,
    )
    return optimizer, scheduler


class WarmupMultiStepLR:
    """Linear warm-up, then step decay; call :meth:`step` once per optimisation step.

    Args:
        optimizer: its groups' ``lr`` are overwritten with ``base_lr * factor(t)``.
        base_lr: the rate after warm-up and before the first milestone.
        milestones: steps at which the rate is multiplied by ``gamma``.
        gamma: decay factor.
        warmup_iters: warm-up length in steps (0: none).
        warmup_factor: factor at step 0.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        base_lr: float,
        milestones: tuple[int, ...],
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
    ) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.last_iter = 0
        self._apply()

    def factor(self, iteration: int) -> float:
        """The multiplier of ``base_lr`` at a step."""
        decay = self.gamma ** bisect.bisect_right(self.milestones, iteration)
        if iteration >= self.warmup_iters:
            return decay
        alpha = iteration / self.warmup_iters
        return decay * (self.warmup_factor * (1.0 - alpha) + alpha)

    def lr_at(self, iteration: int) -> float:
        return self.base_lr * self.factor(iteration)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def step(self) -> None:
        """Advances one step and sets the groups' learning rate for the next one."""
        self.last_iter += 1
        self._apply()

    def _apply(self) -> None:
        lr = self.lr_at(self.last_iter)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_iter": self.last_iter,
            "base_lr": self.base_lr,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "warmup_iters": self.warmup_iters,
            "warmup_factor": self.warmup_factor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the step; the schedule itself stays the one this object was built with."""
        self.last_iter = int(state["last_iter"])
        self._apply()
