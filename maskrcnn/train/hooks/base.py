"""The hook interface of the training loop (in the spirit of detectron2's ``HookBase``).

The loop (:meth:`maskrcnn.train.trainer.Trainer.run`) calls, for every hook in its list, in
list order:

    before_train(loop)                      once, before the first step
    for each step:
        before_step(loop)                   before the step is seeded and run
        ... seed_step, one optimisation step, scheduler step ...
        after_step(loop)                    loop.iteration counts the step, loop.outcome is it
    after_train(loop)                       once, always: also after an exception (then
                                            loop.stop_reason is "nonfinite" or "error")

Hooks talk to the loop through one :class:`LoopState`, which the loop updates; a hook reads
it and may raise to stop the run (e.g. the non-finite streak's
:class:`~maskrcnn.train.hooks.nonfinite.NonFiniteLossError`). Everything else a hook needs
(a writer, a period, the function that saves a checkpoint) it receives when it is built, so
that a hook can be tested with a hand-made :class:`LoopState`.

The trainer's list (``Trainer.hooks``) is, in this order: progress bar, non-finite streak,
metrics rows, checkpoints, final model, evaluation, time budget, curves, and on the CPU the
thread count (:class:`~maskrcnn.train.hooks.threads.ThreadsHook`). So a step's
checkpoint is taken before its evaluation, a diverging step raises before it is logged, the
time budget's step count (:class:`~maskrcnn.train.hooks.budget.BudgetHook`, which may change
``LoopState.max_iter``) is revised once the step's checkpoint and evaluation took their time,
and at the end the last rows are written, then the last checkpoint, the final model (written
even if the evaluation then fails), the final evaluation and the curves (which show that
evaluation).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

from maskrcnn.train.step import StepOutcome

StopReason = Literal["max_iter", "time_budget", "interrupted", "nonfinite", "error"]
# The reasons of a run that stopped cleanly (its state is saved).
CLEAN_STOPS: tuple[StopReason, ...] = ("max_iter", "time_budget", "interrupted")
# The reasons after which the run is finished: final evaluation, final model and curves.
FINISHED: tuple[StopReason, ...] = ("max_iter", "time_budget")


@dataclass
class LoopState:
    """What the loop shares with its hooks.

    Attributes:
        iteration: steps completed (after ``after_step``: including the step just run).
        max_iter: the step at which the run ends (the time budget's hook may change it).
        start_iteration: the step this invocation started from (a resumed run's checkpoint).
        skipped_steps: steps skipped for a non-finite loss or gradient, in the whole run.
        epoch: the data's epoch after the last step.
        lr: the learning rate of the last step.
        outcome: what the last step did (None before the first step).
        stop_reason: why the loop ended (None while it runs).
        elapsed_before: wall-clock seconds of earlier invocations of this run.
        started: ``time.monotonic()`` when this invocation's loop started.
    """

    iteration: int
    max_iter: int
    start_iteration: int = 0
    skipped_steps: int = 0
    epoch: int = 0
    lr: float = math.nan
    outcome: StepOutcome | None = None
    stop_reason: StopReason | None = None
    elapsed_before: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def record(self, outcome: StepOutcome, *, lr: float, epoch: int) -> None:
        """Counts one step (the loop calls it before ``after_step``)."""
        self.iteration += 1
        self.outcome, self.lr, self.epoch = outcome, lr, epoch
        if outcome.skipped:
            self.skipped_steps += 1

    def elapsed_seconds(self) -> float:
        """Wall-clock seconds of the whole run so far (earlier invocations included)."""
        return self.elapsed_before + time.monotonic() - self.started

    @property
    def stopped_cleanly(self) -> bool:
        return self.stop_reason in CLEAN_STOPS

    @property
    def finished(self) -> bool:
        """The run ended at ``max_iter`` or its time budget (not interrupted, no error)."""
        return self.stop_reason in FINISHED


class Hook:
    """A piece of the training loop's work; every method is a no-op by default."""

    def before_train(self, loop: LoopState) -> None:
        """Once, before the first step."""

    def before_step(self, loop: LoopState) -> None:
        """Before each step (``loop.iteration`` steps are done)."""

    def after_step(self, loop: LoopState) -> None:
        """After each step (``loop.outcome`` is the step, ``loop.iteration`` counts it)."""

    def after_train(self, loop: LoopState) -> None:
        """Once at the end, also after an exception (see ``loop.stop_reason``)."""
