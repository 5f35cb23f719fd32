"""A schedule that fits a time budget: the step count chosen from measured times.

With ``runtime.max_minutes`` (and ``schedule.fit_to_budget``, the default), a run times its
first steps, and a few validation images, then fixes its step count ``max_iter``: the most
steps (at most the configured ``max_iter``) whose training, periodic evaluations and final
evaluation fit in what is left of the budget, minus a margin. The warm-up and the decay
milestones keep their fractions of the step count, so a run on a slow machine takes fewer
steps but still warms up, decays and ends with an evaluated model inside its budget.

Every ``replan_every`` steps the times are measured again and the step count revised when
it moved by more than ``min_change`` (or no longer fits): evaluation times are replaced by
measured ones, a slowdown (another process taking a core) shortens the run. A revision only
moves what lies ahead: milestones and warm-up knots of steps already taken stay, so the rate
of every step is a pure function of ``(step, final plan)`` (:class:`StepPlan`), and the plan
is in every checkpoint. A resumed run continues on its checkpoint's plan without revising it.

:func:`fit_plan` is the pure decision; :class:`~maskrcnn.train.hooks.budget.BudgetHook` takes
the measurements and applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskrcnn.train.schedule import StepPlan


@dataclass(frozen=True)
class BudgetPolicy:
    """How a time budget is planned.

    Attributes:
        skip_iters: first steps of an invocation left out of the timing (kernel selection,
            allocator and data-loader warm-up make them slow).
        measure_iters: steps timed before the first plan.
        replan_every: steps between re-estimates (0: the first plan is kept).
        margin: fraction of the budget left free (final checkpoint, model file, noise).
        probe_images: validation images timed for the first evaluation estimate.
        probe_safety: factor on the probe's estimate (a trained model detects more than the
            young one timed, and each detection costs a mask).
        eval_safety: factor on the longest evaluation measured so far.
        min_change: relative change of the step count below which the plan is kept.
    """

    skip_iters: int = 2
    measure_iters: int = 10
    replan_every: int = 50
    margin: float = 0.05
    probe_images: int = 4
    probe_safety: float = 1.5
    eval_safety: float = 1.25
    min_change: float = 0.01

    def __post_init__(self) -> None:
        for name in ("skip_iters", "replan_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"BudgetPolicy.{name}: must be >= 0")
        if self.measure_iters < 1 or self.probe_images < 1:
            raise ValueError("BudgetPolicy: measure_iters and probe_images must be >= 1")
        if not 0.0 <= self.margin < 1.0 or self.min_change < 0:
            raise ValueError("BudgetPolicy: margin must be in [0, 1), min_change >= 0")
        if self.probe_safety < 1.0 or self.eval_safety < 1.0:
            raise ValueError("BudgetPolicy: the safety factors must be >= 1")


def evaluations_between(step: int, end: int, period: int) -> int:
    """How many evaluations run after ``step`` up to and including the final one at ``end``:
    every ``period`` steps (0: none) and one at the end (shared when ``end`` is a multiple)."""
    if period <= 0:
        return 1
    return end // period - step // period + (1 if end % period else 0)


def seconds_needed(
    step: int, end: int, *, step_seconds: float, eval_seconds: float, eval_period: int
) -> float:
    """Estimated seconds from ``step`` to an evaluated model at ``end``."""
    evals = evaluations_between(step, end, eval_period)
    return (end - step) * step_seconds + evals * eval_seconds


def fit_plan(
    current: StepPlan,
    base: StepPlan,
    *,
    step: int,
    seconds_left: float,
    step_seconds: float,
    eval_seconds: float,
    eval_period: int,
    min_change: float = 0.0,
) -> StepPlan:
    """The plan that ends, evaluated, within ``seconds_left`` of ``step``.

    Args:
        current: the plan in force (steps before ``step`` have been taken with it).
        base: the configured plan: its ``max_iter`` is the most steps a fit may choose, its
            warm-up and milestones are scaled by ``max_iter / base.max_iter``.
        step: steps taken.
        seconds_left: seconds of the budget left for training and every evaluation.
        step_seconds: seconds per step (checkpoints and logging included).
        eval_seconds: seconds per evaluation (0 without a validation set).
        eval_period: steps between periodic evaluations (0: only the final one).
        min_change: keep ``current`` (already fitted) if it still fits and the new step count
            differs by at most this fraction of it.

    Returns:
        A fitted plan with at least ``step + 1`` steps; its milestones before ``step`` and
        its warm-up before ``step`` are ``current``'s, so every step taken keeps its rate.
    """
    cap = base.max_iter

    def fits(end: int) -> bool:
        cost = seconds_needed(
            step,
            end,
            step_seconds=step_seconds,
            eval_seconds=eval_seconds,
            eval_period=eval_period,
        )
        return cost <= seconds_left

    low, high = step + 1, max(step + 1, cap)
    if not fits(low):
        end = low
    else:  # the largest end in [low, high] that fits (the cost grows with the end)
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if fits(mid) else (low, mid - 1)
        end = low
    if current.fitted and fits(current.max_iter) and current.max_iter > step:
        if abs(end - current.max_iter) <= min_change * current.max_iter:
            return current
    return _scaled(current, base, step=step, end=end)


def _scaled(current: StepPlan, base: StepPlan, *, step: int, end: int) -> StepPlan:
    """``base`` scaled to ``end`` steps, keeping what ``current`` did before ``step``."""
    ratio = end / base.max_iter
    kept = [m for m in current.milestones if m < step]
    ahead = [max(step, round(m * ratio)) for m in base.milestones[len(kept) :]]
    warmup = current.warmup
    if current.warmup_iters > step:  # still warming up: shorten (or keep) what is left
        wanted = max(step + 1, round(base.warmup_iters * ratio))
        if wanted != current.warmup_iters:
            kept_ramps = tuple(r for r in current.warmup if r[0] < step)
            warmup = (*kept_ramps, (step, current.warmup_factor_at(step), wanted, 1.0))
    return StepPlan(
        max_iter=end,
        milestones=(*kept, *ahead),
        gamma=current.gamma,
        warmup=warmup,
        fitted=True,
        revisions=(*current.revisions, (step, end)),
    )
