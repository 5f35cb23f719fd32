"""SIGINT / SIGTERM as a request to stop after the current step (a second Ctrl-C aborts)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger("maskrcnn.train")


class StopSignals:
    """SIGINT / SIGTERM set :attr:`requested`; a second SIGINT raises KeyboardInterrupt.

    Use as a context manager; the previous handlers come back on exit. Outside the main
    thread nothing is installed.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning(
            "%s received: stopping after this step (checkpoint is saved; Ctrl-C again to "
            "abort at once)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
