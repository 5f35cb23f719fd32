"""Rank 0's ``metrics.jsonl`` (one JSON object per line) and optional TensorBoard events."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

METRICS_FILE = "metrics.jsonl"


def _tensorboard_writer(log_dir: Path) -> SummaryWriter | None:
    """A TensorBoard event writer into ``log_dir``, or None when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional (ImportError without it)
        return None
    return SummaryWriter(log_dir=str(log_dir))


class MetricsWriter:
    """Appends rows to ``run_dir/metrics.jsonl`` and, when TensorBoard is installed, events.

    Args:
        run_dir: the run folder.
        enabled: False on ranks other than 0 (every method is then a no-op).
        tensorboard: also write ``run_dir/tensorboard`` event files if TensorBoard imports.
    """

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool = True) -> None:
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self._tb: SummaryWriter | None = None
        if enabled and tensorboard:
            self._tb = _tensorboard_writer(run_dir / "tensorboard")

    def truncate_after(self, iteration: int) -> None:
        """Drops lines of steps after ``iteration`` (written by a run that was then killed)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if isinstance(row, dict) and int(row.get("iter", 0)) <= iteration:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        """Appends one row (with ``"type"`` and ``"iter"``); numbers also go to TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self._tb is not None:
            prefix = "eval" if row.get("type") == "eval" else "train"
            for key, value in row.items():
                if key not in ("iter", "type") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{key}", value, row["iter"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
