"""Running means of the named losses over a window of steps (e.g. between two log lines)."""

from __future__ import annotations

from collections.abc import Sequence


class LossMeter:
    """Sums named values step by step; :meth:`means` averages them, :meth:`reset` clears.

    The names are those of the first step added after a reset (every step of a run reports
    the same losses). Sums are accumulated in step order, so a mean is exactly
    ``sum(values) / count`` as Python computes it.
    """

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.count = 0
        self._sums: list[float] = []

    def add(self, names: Sequence[str], values: Sequence[float]) -> None:
        """Adds one step's values (``values[k]`` is the loss ``names[k]``)."""
        if len(names) != len(values):
            raise ValueError(f"{len(names)} names but {len(values)} values")
        if self.count == 0:
            self.names, self._sums = tuple(names), [0.0] * len(names)
        elif tuple(names) != self.names:
            raise ValueError(f"losses {list(names)} differ from the window's {list(self.names)}")
        for k, value in enumerate(values):
            self._sums[k] += value
        self.count += 1

    def means(self) -> dict[str, float]:
        """Name -> mean over the steps added since the last reset (empty when none)."""
        return {name: s / self.count for name, s in zip(self.names, self._sums)}

    def reset(self) -> None:
        self.names, self.count, self._sums = (), 0, []

    def __len__(self) -> int:
        return self.count
