"""The ``"train"`` rows of ``metrics.jsonl``: mean losses every ``period`` steps."""

from __future__ import annotations

from typing import Any

from maskrcnn.train.hooks.base import Hook, LoopState
from maskrcnn.train.meter import LossMeter
from maskrcnn.train.metrics import MetricsWriter


class MetricsHook(Hook):
    """Writes one row every ``period`` steps, at ``max_iter``, and for the steps left at the end.

    A row: ``{"type": "train", "iter", "lr", <mean of each loss over the window's finite
    steps>, "time", "epoch", "skipped_total"}`` (no losses when every step of the window was
    skipped). ``lr`` is the rate of the row's step, ``time`` the run's seconds so far.

    Args:
        writer: the run's writer (disabled on ranks other than 0).
        period: steps between rows.
    """

    def __init__(self, writer: MetricsWriter, *, period: int) -> None:
        self.writer = writer
        self.period = period
        self.window = LossMeter()

    def after_step(self, loop: LoopState) -> None:
        assert loop.outcome is not None
        if not loop.outcome.skipped:
            self.window.add(loop.outcome.names, loop.outcome.values)
        if loop.iteration % self.period == 0 or loop.iteration == loop.max_iter:
            self._write(loop)

    def after_train(self, loop: LoopState) -> None:
        if len(self.window) and loop.stop_reason != "error":
            self._write(loop)

    def _write(self, loop: LoopState) -> None:
        row: dict[str, Any] = {"type": "train", "iter": loop.iteration, "lr": loop.lr}
        row.update(self.window.means())
        row.update(
            time=round(loop.elapsed_seconds(), 3),
            epoch=loop.epoch,
            skipped_total=loop.skipped_steps,
        )
        self.writer.write(row)
        self.window.reset()
