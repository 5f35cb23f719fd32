"""SGD (the Mask R-CNN recipe) or AdamW: parameter groups and an iteration-based learning rate.

The rate at step ``t`` is ``lr * warmup(t) * gamma ** (number of milestones <= t)``, with a
linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters`` steps (Goyal et al., 2017).
The numbers are one :class:`StepPlan`: the rate is a pure function of ``(step, plan)``.

Without a time budget the plan is the configuration's (``ScheduleConfig``). With one, the
run's step count is fitted to the budget as it goes (:mod:`maskrcnn.train.budget`), and the
plan is replaced by :meth:`WarmupMultiStepLR.set_plan`, which refuses any plan that would
change the rate of a step already taken. The plan is saved in every checkpoint, so a resumed
run continues on the same milestones.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from maskrcnn.train.config import ScheduleConfig, TrainConfig

logger = logging.getLogger("maskrcnn.train")


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
        optimizer, base_lr=cfg.lr, plan=StepPlan.from_config(cfg.schedule)
    )
    return optimizer, scheduler


@dataclass(frozen=True)
class StepPlan:
    """The resolved learning-rate schedule of a run, in steps.

    Attributes:
        max_iter: the step at which the run ends.
        milestones: steps at which the rate is multiplied by ``gamma`` (non-decreasing; two
            equal ones decay twice at once).
        gamma: decay factor.
        warmup: the warm-up's linear ramps ``(start, start_factor, end, end_factor)``; a ramp
            holds from its start to the next ramp's start (the last one to its end, where
            the factor is 1.0); empty: no warm-up. A configured warm-up is ``((0,
            warmup_factor, warmup_iters, 1.0),)``; one shortened to fit a budget at step ``p``
            gets a second ramp from ``p``, and the first keeps the steps before ``p`` exact.
        fitted: the step count was fitted to a time budget (:mod:`maskrcnn.train.budget`).
        revisions: the fit's decisions ``(step, max_iter)``: at that step, that many steps
            were chosen (empty when not fitted).
    """

    max_iter: int
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup: tuple[tuple[int, float, int, float], ...] = ()
    fitted: bool = False
    revisions: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        starts = [r[0] for r in self.warmup]
        if (
            starts != sorted(set(starts))
            or any(start >= end for start, _, end, _ in self.warmup)
            or (self.warmup and self.warmup[-1][3] != 1.0)
        ):
            raise ValueError(
                "warm-up ramps must start at increasing steps, each before its end, the last "
                f"ending at factor 1, got {self.warmup}"
            )

    @staticmethod
    def from_config(schedule: ScheduleConfig) -> StepPlan:
        """The plan of a ``ScheduleConfig`` (milestones at its fractions of ``max_iter``)."""
        return StepPlan.linear(
            max_iter=schedule.max_iter,
            milestones=schedule.milestones(),
            gamma=schedule.gamma,
            warmup_iters=schedule.warmup_iters,
            warmup_factor=schedule.warmup_factor,
        )

    @staticmethod
    def linear(
        *,
        max_iter: int,
        milestones: tuple[int, ...],
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
    ) -> StepPlan:
        """A plan with a linear warm-up from ``warmup_factor`` over ``warmup_iters`` steps."""
        warmup = ((0, float(warmup_factor), int(warmup_iters), 1.0),) if warmup_iters else ()
        return StepPlan(
            max_iter=int(max_iter),
            milestones=tuple(int(m) for m in milestones),
            gamma=float(gamma),
            warmup=warmup,
        )

    @property
    def warmup_iters(self) -> int:
        """The step at which the warm-up ends (0: none)."""
        return self.warmup[-1][2] if self.warmup else 0

    def warmup_factor_at(self, iteration: int) -> float:
        """The warm-up's factor at a step (1.0 after it)."""
        ramps = self.warmup
        if not ramps or iteration >= ramps[-1][2]:
            return 1.0
        i = bisect.bisect_right([r[0] for r in ramps], iteration)
        start, start_factor, end, end_factor = ramps[max(i - 1, 0)]
        alpha = (iteration - start) / (end - start)
        return start_factor * (1.0 - alpha) + end_factor * alpha

    def factor(self, iteration: int) -> float:
        """The multiplier of the base rate at a step."""
        decay = self.gamma ** bisect.bisect_right(self.milestones, iteration)
        return decay * self.warmup_factor_at(iteration)

    def same_before(self, other: StepPlan, iteration: int) -> bool:
        """Whether both plans give the same rate at every step before ``iteration``."""
        passed = [m for m in self.milestones if m < iteration]
        theirs = [m for m in other.milestones if m < iteration]
        if passed != theirs or self.gamma != other.gamma:
            return False
        end = min(iteration, max(self.warmup_iters, other.warmup_iters))
        return all(self.warmup_factor_at(t) == other.warmup_factor_at(t) for t in range(end))

    def to_dict(self) -> dict[str, Any]:
        """Plain containers (for checkpoints and ``metrics.jsonl``)."""
        return {
            "max_iter": self.max_iter,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "warmup": [list(r) for r in self.warmup],
            "fitted": self.fitted,
            "revisions": [[s, n] for s, n in self.revisions],
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> StepPlan:
        """Inverse of :meth:`to_dict`."""
        return StepPlan(
            max_iter=int(data["max_iter"]),
            milestones=tuple(int(m) for m in data["milestones"]),
            gamma=float(data["gamma"]),
            warmup=tuple((int(a), float(b), int(c), float(d)) for a, b, c, d in data["warmup"]),
            fitted=bool(data.get("fitted", False)),
            revisions=tuple((int(s), int(n)) for s, n in data.get("revisions", ())),
        )


class WarmupMultiStepLR:
    """Linear warm-up, then step decay; call :meth:`step` once per optimisation step.

    Args:
        optimizer: its groups' ``lr`` are overwritten with ``base_lr * plan.factor(t)``.
        base_lr: the rate after warm-up and before the first milestone.
        plan: the schedule; without one it is built from the following arguments.
        milestones: steps at which the rate is multiplied by ``gamma``.
        gamma: decay factor.
        warmup_iters: warm-up length in steps (0: none).
        warmup_factor: factor at step 0.

    Attributes:
        base_plan: the plan it was built with (the configuration's).
        plan: the plan in force (a fitted one replaces ``base_plan``, see :meth:`set_plan`).
        last_iter: steps taken; the groups hold the rate of step ``last_iter``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        base_lr: float,
        plan: StepPlan | None = None,
        milestones: tuple[int, ...] = (),
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
    ) -> None:
        if plan is None:
            plan = StepPlan.linear(
                max_iter=max([1, warmup_iters, *milestones]),
                milestones=milestones,
                gamma=gamma,
                warmup_iters=warmup_iters,
                warmup_factor=warmup_factor,
            )
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.base_plan = plan
        self.plan = plan
        self.last_iter = 0
        self._apply()

    @property
    def milestones(self) -> tuple[int, ...]:
        return self.plan.milestones

    def factor(self, iteration: int) -> float:
        """The multiplier of ``base_lr`` at a step."""
        return self.plan.factor(iteration)

    def lr_at(self, iteration: int) -> float:
        return self.base_lr * self.factor(iteration)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def step(self) -> None:
        """Advances one step and sets the groups' learning rate for the next one."""
        self.last_iter += 1
        self._apply()

    def set_plan(self, plan: StepPlan) -> None:
        """Replaces the plan from the next step on (and sets that step's rate).

        Raises:
            ValueError: the plan changes the rate of a step already taken.
        """
        if not plan.same_before(self.plan, self.last_iter):
            raise ValueError(
                f"a new schedule must keep the {self.last_iter} steps already taken: "
                f"{plan} differs from {self.plan} before step {self.last_iter}"
            )
        self.plan = plan
        self._apply()

    def _apply(self) -> None:
        lr = self.lr_at(self.last_iter)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_iter": self.last_iter,
            "base_lr": self.base_lr,
            "plan": self.plan.to_dict(),
            "base_plan": self.base_plan.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores the step and, when the checkpoint's plan was fitted to a time budget from
        the same configured schedule as this one's, that plan (so a resumed run continues on
        the same milestones). Otherwise the plan stays the one this object was built with."""
        self.last_iter = int(state["last_iter"])
        saved = state.get("plan")
        if saved is not None and saved.get("fitted"):
            base = StepPlan.from_dict(state["base_plan"])
            if base == self.base_plan:
                self.plan = StepPlan.from_dict(saved)
                logger.info(
                    "resuming the time-budgeted schedule: %d steps, milestones %s",
                    self.plan.max_iter,
                    list(self.plan.milestones),
                )
            else:
                logger.warning(
                    "the schedule's configuration changed: the checkpoint's fitted plan "
                    "(%d steps) is dropped and the schedule is fitted again",
                    StepPlan.from_dict(saved).max_iter,
                )
        self._apply()
