"""Fits the run's step count to its time budget (:mod:`maskrcnn.train.budget`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from maskrcnn.evaluation.coco_eval import EvalResult
from maskrcnn.train.budget import BudgetPolicy, fit_plan, seconds_needed
from maskrcnn.train.hooks.base import Hook, LoopState
from maskrcnn.train.schedule import StepPlan, WarmupMultiStepLR

logger = logging.getLogger("maskrcnn.train")


class EvalTimer:
    """Wraps an evaluation function and remembers how long each call took.

    Attributes:
        seconds: the duration of every call so far.
    """

    def __init__(self, evaluate: Callable[[int], EvalResult | None]) -> None:
        self.evaluate = evaluate
        self.seconds: list[float] = []

    def __call__(self, iteration: int) -> EvalResult | None:
        start = time.monotonic()
        try:
            return self.evaluate(iteration)
        finally:
            self.seconds.append(time.monotonic() - start)

    @property
    def total(self) -> float:
        return sum(self.seconds)


class BudgetHook(Hook):
    """Times the steps and evaluations, fixes the step count, and revises it as it goes.

    Runs after the checkpoint and evaluation hooks of a step, so the time they took is counted.
    Inert without a budget, when the scheduler's plan was restored already fitted (a resumed
    run keeps its plan), or when the run ends before the first plan would be made.

    Args:
        scheduler: the run's schedule (its ``base_plan`` is the configuration's).
        budget_seconds: the invocation's budget (None: no budget, the hook does nothing).
        timer: times the run's evaluations (the EvalHook calls through it).
        eval_period: steps between periodic evaluations (0: only the final one).
        probe: evaluates N validation images and returns the seconds it took (None: no
            validation set, evaluations cost nothing).
        eval_images: images one evaluation covers.
        agree: the maxima over all ranks of a list of numbers, so that every rank makes the
            same plan (identity in a single process).
        record: called with each new plan and the numbers it was made from (the metrics row).
        policy: how the budget is planned (None: :class:`BudgetPolicy`'s defaults).

    Attributes:
        plans: the plans this invocation made, in order.
    """

    def __init__(
        self,
        scheduler: WarmupMultiStepLR,
        *,
        budget_seconds: float | None,
        timer: EvalTimer,
        eval_period: int,
        probe: Callable[[int], float] | None,
        eval_images: int,
        agree: Callable[[list[float]], list[float]] = lambda xs: xs,
        record: Callable[[StepPlan, dict[str, float]], None] = lambda plan, why: None,
        policy: BudgetPolicy | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.budget = budget_seconds
        self.timer = timer
        self.eval_period = eval_period
        self.probe = probe
        self.eval_images = eval_images
        self.agree = agree
        self.record = record
        self.policy = policy or BudgetPolicy()
        self.plans: list[StepPlan] = []
        self.active = False
        self._probe_seconds: float | None = None
        self._mark: tuple[int, float, float] | None = None  # (step, time, eval seconds)
        self._next_plan = 0

    def before_train(self, loop: LoopState) -> None:
        self.active = self.budget is not None and not self.scheduler.plan.fitted
        self._mark = None
        self._next_plan = loop.iteration + self.policy.skip_iters + self.policy.measure_iters
        if self.policy.skip_iters == 0:
            self._mark = (loop.iteration, time.monotonic(), self.timer.total)

    def after_step(self, loop: LoopState) -> None:
        if not self.active or loop.iteration >= loop.max_iter:
            return
        start = loop.iteration - loop.start_iteration
        if start == self.policy.skip_iters:
            self._mark = (loop.iteration, time.monotonic(), self.timer.total)
        if self._mark is None or loop.iteration < self._next_plan:
            return
        step0, time0, eval0 = self._mark
        now = time.monotonic()
        step_seconds = max(0.0, (now - time0) - (self.timer.total - eval0)) / (
            loop.iteration - step0
        )
        self._plan(loop, step_seconds)
        self._mark = (loop.iteration, now, self.timer.total)
        if self.policy.replan_every:
            self._next_plan = loop.iteration + self.policy.replan_every
        else:
            self.active = False

    def _eval_seconds(self) -> float:
        if self.probe is None:
            return 0.0
        if self.timer.seconds:
            return self.policy.eval_safety * max(self.timer.seconds)
        if self._probe_seconds is None:
            images = min(self.policy.probe_images, self.eval_images)
            self._probe_seconds = self.probe(images) * self.eval_images / images
        return self.policy.probe_safety * self._probe_seconds

    def _plan(self, loop: LoopState, step_seconds: float) -> None:
        assert self.budget is not None
        eval_seconds = self._eval_seconds()
        step_seconds, eval_seconds = self.agree([step_seconds, eval_seconds])
        spent = time.monotonic() - loop.started  # the probe included
        left = self.budget - spent - self.policy.margin * self.budget - 2 * step_seconds
        current = self.scheduler.plan
        plan = fit_plan(
            current,
            self.scheduler.base_plan,
            step=loop.iteration,
            seconds_left=left,
            step_seconds=step_seconds,
            eval_seconds=eval_seconds,
            eval_period=self.eval_period,
            min_change=self.policy.min_change,
        )
        if plan is current:
            return
        self.scheduler.set_plan(plan)
        loop.max_iter = plan.max_iter
        self.plans.append(plan)
        needed = seconds_needed(
            loop.iteration,
            plan.max_iter,
            step_seconds=step_seconds,
            eval_seconds=eval_seconds,
            eval_period=self.eval_period,
        )
        logger.info(
            "time budget: %.0f of %.0f s spent, %.3f s per step, %.1f s per evaluation: "
            "%d steps (warm-up to %d, decay at %s), done in about %.0f s",
            spent,
            self.budget,
            step_seconds,
            eval_seconds,
            plan.max_iter,
            plan.warmup_iters,
            list(plan.milestones),
            spent + needed,
        )
        self.record(
            plan,
            {
                "step_seconds": step_seconds,
                "eval_seconds": eval_seconds,
                "spent_seconds": spent,
                "budget_seconds": self.budget,
            },
        )
