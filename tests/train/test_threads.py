"""The CPU thread count follows the idle cores (maskrcnn.train.threads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskrcnn.train import threads as thr
from maskrcnn.train.hooks.base import LoopState
from maskrcnn.train.hooks.threads import ThreadsHook

TICK = os.sysconf("SC_CLK_TCK")


def stat_file(path: Path, per_cpu: dict[int, tuple[int, ...]]) -> Path:
    """A /proc/stat with these per-cpu columns (user nice system idle iowait irq softirq ...)."""
    total = [sum(col) for col in zip(*per_cpu.values(), strict=False)]
    lines = ["cpu  " + " ".join(map(str, total))]
    lines += [f"cpu{n} " + " ".join(map(str, cols)) for n, cols in per_cpu.items()]
    lines += ["intr 12345 0 0", "ctxt 999", "processes 42"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_cpu_sample_counts_the_usable_cores_and_leaves_niced_time_out(tmp_path: Path) -> None:
    path = stat_file(
        tmp_path / "stat",
        {0: (100, 50, 10, 900, 5, 1, 2, 3), 1: (200, 0, 20, 800, 0, 0, 0, 0), 2: (7, 7, 7, 7)},
    )
    sample = thr.read_cpu_sample(frozenset({0, 1}), stat_path=path)
    assert sample is not None
    # user + system + irq + softirq + steal of cpu0 and cpu1; nice (50) and idle/iowait are not
    assert sample.competing == pytest.approx((100 + 10 + 1 + 2 + 3 + 200 + 20) / TICK)
    only_two = thr.read_cpu_sample(frozenset({2}), stat_path=path)
    assert only_two is not None and only_two.competing == pytest.approx(14 / TICK)
    assert thr.read_cpu_sample(frozenset({0}), stat_path=tmp_path / "missing") is None


def test_busy_elsewhere_is_the_cores_busy_time_less_our_own() -> None:
    before = thr.CpuSample(wall=10.0, competing=100.0, own=5.0)
    after = thr.CpuSample(wall=12.0, competing=103.0, own=6.0)  # 3 s busy, 1 s of it ours
    assert before.busy_elsewhere(after) == pytest.approx(1.0)
    assert after.busy_elsewhere(before) == 0.0  # no time passed forwards
    ours_only = thr.CpuSample(wall=12.0, competing=104.0, own=9.0)
    assert before.busy_elsewhere(ours_only) == 0.0


@pytest.mark.parametrize(
    ("cores", "busy", "threads"),
    [(2, 0.0, 2), (2, 0.2, 2), (2, 0.5, 1), (2, 0.67, 1), (2, 1.0, 1), (2, 3.0, 1), (8, 2.4, 6)],
)
def test_threads_for(cores: int, busy: float, threads: int) -> None:
    assert thr.threads_for(cores, busy) == threads


def test_a_fixed_count_wins_and_is_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[int] = []
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    governor = thr.ThreadGovernor(requested=1, set_threads=applied.append)
    assert governor.start().threads == 1 and governor.start().source == "runtime.threads"
    from_env = thr.ThreadGovernor(set_threads=applied.append)
    choice = from_env.start()
    assert (choice.threads, choice.source) == (3, "OMP_NUM_THREADS")
    assert applied == [1, 1, 3]
    assert "set by OMP_NUM_THREADS" in choice.describe()


def test_the_count_follows_a_neighbour_that_comes_and_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(thr, "usable_cores", lambda: frozenset({0, 1}))
    monkeypatch.setattr(thr.time, "sleep", lambda seconds: None)
    # (wall, competing, own) of each read: idle at start, then a neighbour holds ~0.7 core
    # beside our two threads, then a whole core beside our one, then it has gone
    samples = iter(
        [
            (0.0, 0.0, 0.0),
            (0.25, 0.0, 0.0),
            (20.25, 40.0, 26.0),  # 40 s busy, 26 s ours: 0.7 core elsewhere
            (40.25, 80.0, 46.0),  # 20 s ours, 20 s elsewhere: still 1 core
            (60.25, 120.0, 86.0),  # all ours again
        ]
    )

    def fake_read(cores: frozenset[int], *, stat_path: Path = thr.PROC_STAT) -> thr.CpuSample:
        wall, competing, own = next(samples)
        return thr.CpuSample(wall=wall, competing=competing, own=own)

    monkeypatch.setattr(thr, "read_cpu_sample", fake_read)
    clock = iter([5.0, 20.25, 40.25, 60.25])
    monkeypatch.setattr(thr.time, "monotonic", lambda: next(clock))
    applied: list[int] = []
    governor = thr.ThreadGovernor(period_seconds=20.0, set_threads=applied.append)
    start = governor.start()
    assert (start.threads, start.source, start.busy_elsewhere) == (2, "auto", 0.0)
    rows: list[tuple[int, int]] = []
    hook = ThreadsHook(governor, record=lambda step, choice: rows.append((step, choice.threads)))
    loop = LoopState(iteration=0, max_iter=10)
    for step in (1, 2, 3, 4):  # the first poll comes before the period has passed
        loop.iteration = step
        hook.after_step(loop)
    assert applied == [2, 1, 2]
    assert rows == [(2, 1), (4, 2)]
    assert governor.changes[0].busy_elsewhere == pytest.approx(0.7)


def test_a_busy_neighbour_is_seen_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real /proc/stat: a process spinning on one of our cores is one core busy elsewhere."""
    if thr.read_cpu_sample(thr.usable_cores()) is None:
        pytest.skip("no /proc/stat on this system")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    core = min(thr.usable_cores())
    spinner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os;os.sched_setaffinity(0,{{{core}}});print(1,flush=True)\nwhile True: pass",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert spinner.stdout is not None and spinner.stdout.readline().strip() == b"1"
        applied: list[int] = []
        governor = thr.ThreadGovernor(sample_seconds=1.0, set_threads=applied.append)
        choice = governor.start()
    finally:
        spinner.kill()
        spinner.wait()
    assert choice.busy_elsewhere is not None and choice.busy_elsewhere > 0.6
    assert applied == [max(1, len(thr.usable_cores()) - 1)]
