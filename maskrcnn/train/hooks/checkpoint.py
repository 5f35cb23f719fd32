"""Checkpoints every ``period`` steps and at the end of a cleanly stopped run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from maskrcnn.train.hooks.base import Hook, LoopState


class CheckpointHook(Hook):
    """Calls ``save(loop)`` every ``period`` steps and once at the end if the last step isn't
    saved yet.

    No checkpoint is taken right after a skipped (non-finite) step, and none at the end of a
    run stopped by an error: ``last.ckpt`` stays the last good state. ``save`` runs on every
    rank (:class:`~maskrcnn.train.checkpointer.RunCheckpointer` gathers the generator states
    of all ranks and rank 0 writes).

    Args:
        save: writes the checkpoint of the loop's state.
        period: steps between checkpoints.
        last_checkpoint: ``last.ckpt``: when it exists at the start, the start step is saved.
    """

    def __init__(
        self, save: Callable[[LoopState], object], *, period: int, last_checkpoint: Path
    ) -> None:
        self.save = save
        self.period = period
        self.last_checkpoint = last_checkpoint
        self.saved_at: int | None = None

    def before_train(self, loop: LoopState) -> None:
        self.saved_at = loop.iteration if self.last_checkpoint.exists() else None

    def after_step(self, loop: LoopState) -> None:
        assert loop.outcome is not None
        if loop.iteration % self.period == 0 and not loop.outcome.skipped:
            self._save(loop)

    def after_train(self, loop: LoopState) -> None:
        if loop.stopped_cleanly and self.saved_at != loop.iteration:
            self._save(loop)

    def _save(self, loop: LoopState) -> None:
        self.save(loop)
        self.saved_at = loop.iteration
