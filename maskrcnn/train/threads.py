"""How many CPU threads the steps use: the idle cores, chosen at start-up and re-checked.

torch's CPU kernels run on OpenMP (GNU libgomp), whose threads spin a while at every barrier
before they sleep. With as many threads as cores and another process holding one core, every
parallel region waits for the thread that shares its core with that process: measured on two
cores (``benchmarks/contention.py``), a demo training step took 4.3x its idle time beside one
busy process (7.1x when it arrived mid-run), against 1.8x with one thread. Sleeping at once
(``OMP_WAIT_POLICY=PASSIVE``) costs 32% when idle and still 3.5x beside the busy process, so
the wait policy stays libgomp's default and the thread count follows the idle cores instead:

- at start-up, :meth:`ThreadGovernor.start` samples the cores this process may run on
  (``os.sched_getaffinity``) for a moment and uses one thread per core not busy elsewhere;
- every ``period_seconds`` :meth:`ThreadGovernor.poll` measures again over the period (the
  other processes' CPU time is the cores' busy time, from ``/proc/stat``, less this process's
  own) and changes the thread count when it should: down when a neighbour holds at least
  half a core, up again when it has gone.

Processes with a positive niceness (``nice 19`` batch jobs) yield to ours and are not counted:
their time is ``/proc/stat``'s "nice" column. A fixed count comes from
``runtime.threads`` (``maskrcnn train --threads N``) or, failing that, ``OMP_NUM_THREADS``;
then nothing is measured. Where ``/proc/stat`` cannot be read (not Linux) the count is the
number of usable cores.

Thread counts change how float sums are split, so a run whose thread count changes is not
bit-identical to one whose count did not: fix it (``--threads``) where that matters.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CpuSample", "ThreadChoice", "ThreadGovernor", "read_cpu_sample", "threads_for"]

logger = logging.getLogger("maskrcnn.train")

PROC_STAT = Path("/proc/stat")
# /proc/stat's per-cpu columns: user nice system idle iowait irq softirq steal (guest time is
# already counted in user and nice).
_USER, _NICE, _SYSTEM, _IDLE, _IOWAIT, _IRQ, _SOFTIRQ, _STEAL = range(8)


@dataclass(frozen=True)
class CpuSample:
    """CPU time counters at one moment.

    Attributes:
        wall: ``time.monotonic()`` seconds.
        competing: seconds of CPU time spent so far, summed over the usable cores, by
            processes that compete with this one (all but positively niced ones, and all when
            this process is itself niced), this process included.
        own: seconds of CPU time this process has spent (all its threads).
    """

    wall: float
    competing: float
    own: float

    def busy_elsewhere(self, later: CpuSample) -> float:
        """Cores' worth of CPU that other competing processes used from here to ``later``."""
        seconds = later.wall - self.wall
        if seconds <= 0:
            return 0.0
        others = (later.competing - self.competing) - (later.own - self.own)
        return max(0.0, others / seconds)


def read_cpu_sample(cores: frozenset[int], *, stat_path: Path = PROC_STAT) -> CpuSample | None:
    """Reads the competing and own CPU time now; None where ``stat_path`` cannot be read.

    Args:
        cores: the CPU numbers to count (this process's affinity).
        stat_path: the kernel's ``/proc/stat`` (a file of that format in tests).
    """
    try:
        lines = stat_path.read_text().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    niced = os.getpriority(os.PRIO_PROCESS, 0) > 0 if hasattr(os, "getpriority") else False
    total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores):
            continue
        fields = [int(v) for v in rest.split()]
        fields += [0] * (8 - len(fields))
        busy = fields[_USER] + fields[_SYSTEM] + fields[_IRQ] + fields[_SOFTIRQ] + fields[_STEAL]
        total += busy + (fields[_NICE] if niced else 0)
    return CpuSample(wall=time.monotonic(), competing=total / tick, own=time.process_time())


def threads_for(cores: int, busy_elsewhere: float) -> int:
    """One thread per core not held by other processes (a core counts from half held), >= 1."""
    return max(1, cores - int(busy_elsewhere + 0.5))


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and why.

    Attributes:
        threads: torch's intra-op thread count.
        cores: the cores this process may run on.
        busy_elsewhere: cores' worth of CPU other processes used when it was measured (None:
            not measured).
        source: "auto" (measured), "runtime.threads", "OMP_NUM_THREADS" or "cores" (no
            ``/proc/stat`` to measure with).
    """

    threads: int
    cores: int
    busy_elsewhere: float | None
    source: str

    def describe(self) -> str:
        """E.g. ``"2 threads (2 cores, 0.0 busy elsewhere)"``."""
        why = f"{self.cores} cores"
        if self.busy_elsewhere is not None:
            why += f", {self.busy_elsewhere:.1f} busy elsewhere"
        if self.source not in ("auto", "cores"):
            why += f", set by {self.source}"
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} ({why})"


def usable_cores() -> frozenset[int]:
    """The CPU numbers this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


class ThreadGovernor:
    """Sets ``torch.set_num_threads`` from the idle cores, at start-up and every period.

    Args:
        requested: a fixed thread count (``runtime.threads``); None: ``OMP_NUM_THREADS`` if
            set, else measured.
        period_seconds: how often :meth:`poll` measures again.
        sample_seconds: how long :meth:`start` measures.
        stat_path: ``/proc/stat`` (another file in tests).
        set_threads: applies a thread count (``torch.set_num_threads``; a recorder in tests).
    """

    def __init__(
        self,
        *,
        requested: int | None = None,
        period_seconds: float = 20.0,
        sample_seconds: float = 0.25,
        stat_path: Path = PROC_STAT,
        set_threads: Callable[[int], None] | None = None,
    ) -> None:
        self.cores = usable_cores()
        self.period_seconds = period_seconds
        self.sample_seconds = sample_seconds
        self.stat_path = stat_path
        self._set = set_threads if set_threads is not None else torch.set_num_threads
        self.fixed: ThreadChoice | None = None
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if requested is not None:
            self.fixed = ThreadChoice(requested, len(self.cores), None, "runtime.threads")
        elif env.isdigit() and int(env) > 0:
            self.fixed = ThreadChoice(int(env), len(self.cores), None, "OMP_NUM_THREADS")
        self.choice: ThreadChoice | None = None
        self._last: CpuSample | None = None
        self.changes: list[ThreadChoice] = []

    def start(self) -> ThreadChoice:
        """Chooses and sets the thread count now (measuring for ``sample_seconds``)."""
        if self.fixed is not None:
            return self._apply(self.fixed)
        first = read_cpu_sample(self.cores, stat_path=self.stat_path)
        if first is None:
            return self._apply(ThreadChoice(len(self.cores), len(self.cores), None, "cores"))
        time.sleep(self.sample_seconds)
        later = read_cpu_sample(self.cores, stat_path=self.stat_path)
        assert later is not None
        self._last = later
        busy = first.busy_elsewhere(later)
        return self._apply(
            ThreadChoice(threads_for(len(self.cores), busy), len(self.cores), busy, "auto")
        )

    def poll(self) -> ThreadChoice | None:
        """Measures again once a period has passed; returns the new choice if it changed."""
        if self._last is None or self.choice is None:
            return None
        now = time.monotonic()
        if now - self._last.wall < self.period_seconds:
            return None
        sample = read_cpu_sample(self.cores, stat_path=self.stat_path)
        if sample is None:
            return None
        busy, self._last = self._last.busy_elsewhere(sample), sample
        threads = threads_for(len(self.cores), busy)
        if threads == self.choice.threads:
            return None
        choice = self._apply(ThreadChoice(threads, len(self.cores), busy, "auto"))
        self.changes.append(choice)
        return choice

    def _apply(self, choice: ThreadChoice) -> ThreadChoice:
        self._set(choice.threads)
        self.choice = choice
        return choice
