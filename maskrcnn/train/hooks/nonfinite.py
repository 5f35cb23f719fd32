"""Non-finite losses: warn on each skipped step, stop after too many in a row."""

from __future__ import annotations

import warnings
from pathlib import Path

from maskrcnn.train import checkpoint as ckpt
from maskrcnn.train.hooks.base import Hook, LoopState


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row; the run stopped (its last checkpoint is kept)."""


class NonFiniteHook(Hook):
    """Tracks the streak of skipped steps (non-finite loss, gradient or updated weights, on
    some rank; a non-finite update is rolled back).

    Each skipped step warns (``RuntimeWarning``, when ``warn``); ``max_in_a_row`` of them in a
    row raise :class:`NonFiniteLossError`, whose message names the last good checkpoint in
    ``run_dir``. Any finite step ends the streak.

    Args:
        max_in_a_row: consecutive skipped steps that stop the run.
        run_dir: the run folder (its ``last.ckpt`` is the last good checkpoint).
        warn: warn on each skipped step (rank 0 only, so that the warning appears once).
    """

    def __init__(self, *, max_in_a_row: int, run_dir: Path, warn: bool = True) -> None:
        self.max_in_a_row = max_in_a_row
        self.run_dir = run_dir
        self.warn = warn
        self.streak: list[int] = []  # the steps of the current streak

    def after_step(self, loop: LoopState) -> None:
        assert loop.outcome is not None
        if not loop.outcome.skipped:
            self.streak.clear()
            return
        self.streak.append(loop.iteration)
        if self.warn:
            warnings.warn(
                f"step {loop.iteration}: non-finite loss, gradient or updated weights, step "
                "skipped "
                f"({len(self.streak)} in a row, {loop.skipped_steps} in all; stop at "
                f"{self.max_in_a_row} in a row)",
                RuntimeWarning,
                stacklevel=2,
            )
        if len(self.streak) >= self.max_in_a_row:
            raise NonFiniteLossError(diverged_message(self.run_dir, self.streak))


def diverged_message(run_dir: Path, streak: list[int]) -> str:
    """The error of a run stopped by ``len(streak)`` non-finite steps in a row (the steps in
    ``streak``); it names the last good checkpoint in ``run_dir``."""
    last = run_dir / ckpt.LAST
    kept = (
        f"the last good checkpoint is {last} (step {ckpt.load_checkpoint(last).iteration})"
        if last.exists()
        else "no checkpoint had been written yet"
    )
    return (
        f"{len(streak)} non-finite losses in a row (steps {streak[0]}-{streak[-1]}): training "
        f"stopped (a non-finite loss, gradient or updated weights each time); {kept}. Lower "
        "the learning rate (optim.base_lr) or set optim.clip_grad_norm, then continue with "
        "--resume."
    )
