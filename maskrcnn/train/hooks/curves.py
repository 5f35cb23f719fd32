"""``curves.png``: losses and AP against the step, plotted when the run finished (rank 0)."""

from __future__ import annotations

import logging
from pathlib import Path

from maskrcnn.train.hooks.base import Hook, LoopState

logger = logging.getLogger("maskrcnn.train")

CURVES = "curves.png"


class CurvesHook(Hook):
    """Plots ``metrics_path`` into ``out_png`` at the end of a finished run.

    A missing metrics file draws nothing; a plotting failure is logged, not raised.

    Args:
        metrics_path: the run's ``metrics.jsonl``.
        out_png: the figure to write.
        enabled: draw it (rank 0).
    """

    def __init__(self, metrics_path: Path, out_png: Path, *, enabled: bool) -> None:
        self.metrics_path = metrics_path
        self.out_png = out_png
        self.enabled = enabled

    def after_train(self, loop: LoopState) -> None:
        if not (self.enabled and loop.finished and self.metrics_path.is_file()):
            return
        from maskrcnn.viz.curves import plot_curves

        try:
            plot_curves(self.metrics_path, self.out_png)
        except (ValueError, OSError) as err:
            logger.warning("could not plot the training curves: %s", err)
