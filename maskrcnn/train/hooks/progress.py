"""The progress bar (tqdm), with the window's mean losses every ``period`` steps."""

from __future__ import annotations

from typing import Any, TextIO

from tqdm import tqdm

from maskrcnn.train.hooks.base import Hook, LoopState
from maskrcnn.train.meter import LossMeter


class ProgressHook(Hook):
    """A ``train`` bar from the start step to ``max_iter``.

    Args:
        period: steps between updates of the losses shown beside the bar.
        enabled: show the bar (rank 0 with ``log.progress``).
        file: where the bar goes (None: stderr).
    """

    def __init__(self, *, period: int, enabled: bool, file: TextIO | None = None) -> None:
        self.period = period
        self.enabled = enabled
        self.file = file
        self.window = LossMeter()
        self.bar: Any = None

    def before_train(self, loop: LoopState) -> None:
        self.bar = tqdm(
            total=loop.max_iter,
            initial=loop.iteration,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            disable=not self.enabled,
            file=self.file,
        )

    def after_step(self, loop: LoopState) -> None:
        assert loop.outcome is not None
        if self.bar.total != loop.max_iter:  # the time budget fixed the step count
            self.bar.total = loop.max_iter
        self.bar.update(1)
        if not loop.outcome.skipped:
            self.window.add(loop.outcome.names, loop.outcome.values)
        if loop.iteration % self.period == 0 or loop.iteration == loop.max_iter:
            self.bar.set_postfix_str(postfix(self.window), refresh=False)
            self.window.reset()

    def after_train(self, loop: LoopState) -> None:
        if self.bar is not None:
            self.bar.close()


def postfix(window: LossMeter) -> str:
    """``"total=1.234 rpn_cls=0.567 ..."`` (``loss_`` dropped), or ``"skipped"``."""
    if not len(window):
        return "skipped"
    return " ".join(f"{n.removeprefix('loss_')}={m:.3f}" for n, m in window.means().items())
