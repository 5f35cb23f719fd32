"""The CPU thread count follows the idle cores while the run goes on."""

from __future__ import annotations

import logging
from collections.abc import Callable

from maskrcnn.train.hooks.base import Hook, LoopState
from maskrcnn.train.threads import ThreadChoice, ThreadGovernor

logger = logging.getLogger("maskrcnn.train")


class ThreadsHook(Hook):
    """After each step, lets the governor measure again (once per its period) and logs changes.

    Args:
        governor: the run's started :class:`~maskrcnn.train.threads.ThreadGovernor`; a fixed
            count (``runtime.threads``, ``OMP_NUM_THREADS``) never changes.
        record: called with ``(step, choice)`` on each change (a ``metrics.jsonl`` row).
    """

    def __init__(
        self,
        governor: ThreadGovernor,
        *,
        record: Callable[[int, ThreadChoice], None] | None = None,
    ) -> None:
        self.governor = governor
        self.record = record

    def after_step(self, loop: LoopState) -> None:
        if self.governor.fixed is not None:
            return
        choice = self.governor.poll()
        if choice is None:
            return
        logger.info("step %d: now %s", loop.iteration, choice.describe())
        if self.record is not None:
            self.record(loop.iteration, choice)
