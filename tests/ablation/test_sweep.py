"""The sweep and its report on a tiny set: numbers from the runs' files, resume, failures.

Every run is two or three steps of the C5 stand-in (Table 2d's two rows) at batch 2 on a few
128x128 shapes images, evaluated on two; ``max_iter`` fixes the steps (the budget is ample).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from train_setup import one_thread, subprocess_env

from maskrcnn.ablation import TABLES, DataPaths, SweepSettings, Variant, sweep, write_report
from maskrcnn.ablation.sweep import RESULT, plan_runs, read_result
from maskrcnn.data.shapes import write_shapes_dataset

METRICS = {"mask_AP": ("segm", "AP"), "mask_AP50": ("segm", "AP50")}
METRICS |= {"mask_AP75": ("segm", "AP75"), "box_AP": ("bbox", "AP")}
VARIANTS = TABLES["2d"]  # RoIPool and RoIAlign on the C5 stand-in
SEEDS = (0, 1)


def _data(root: Path) -> DataPaths:
    write_shapes_dataset(root, train=4, val=2, seed=0, image_size=(128, 128))
    return DataPaths.from_dir(root)


def _settings(out: Path, data: DataPaths, **changes: object) -> SweepSettings:
    values: dict[str, object] = {
        "out": str(out),
        "data": data,
        "minutes_per_run": 20.0,
        "seeds": SEEDS,
        "batch_size": 2,
        "precision": "fp32",
        "max_iter": 2,
    }
    values.update(changes)
    return SweepSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DataPaths:
    """Four training and two validation images (read only by the tests)."""
    return _data(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, data: DataPaths
) -> tuple[SweepSettings, list[str]]:
    """Two variants x two seeds, swept in this process; the sweep's printed lines."""
    settings = _settings(tmp_path_factory.mktemp("sweep") / "out", data)
    lines: list[str] = []
    with one_thread():
        result = sweep(VARIANTS, settings, say=lines.append)
    assert not result.interrupted
    write_report(VARIANTS, result.records, settings)
    return settings, lines


def _eval_values(out: Path, run_name: str, seed: int) -> dict[str, float]:
    """A run's figures in percent, read straight from the evaluation file it wrote."""
    folder = out / "runs" / run_name / f"seed{seed}"
    result = json.loads((folder / RESULT).read_text())
    assert result["status"] == "done"
    files = sorted(folder.glob("eval/iter_*/metrics.json"))
    assert [f.relative_to(folder).as_posix() for f in files] == [result["eval"]]
    metrics = json.loads(files[0].read_text())
    return {name: 100 * float(metrics[task][key]) for name, (task, key) in METRICS.items()}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _markdown_row(md: str, label: str) -> list[str]:
    (line,) = [ln for ln in md.splitlines() if ln.startswith(f"| {label} |")]
    return [c.strip() for c in line.strip("|").split("|")]


def _check_report(out: Path) -> None:
    """Every figure of ablation.csv, ablation_runs.csv and ablation.md against the eval files."""
    runs = {(r["run_name"], int(r["seed"])): r for r in _rows(out / "ablation_runs.csv")}
    assert set(runs) == {(v.run_name, s) for v in VARIANTS for s in SEEDS}
    table = {r["variant"]: r for r in _rows(out / "ablation.csv")}
    assert set(table) == {v.label for v in VARIANTS}
    md = (out / "ablation.md").read_text()
    for v in VARIANTS:
        per_seed = [_eval_values(out, v.run_name, s) for s in SEEDS]
        for seed, values in zip(SEEDS, per_seed):
            row = runs[(v.run_name, seed)]
            assert row["status"] == "done" and int(row["iteration"]) == 2
            for name, value in values.items():
                assert row[name] == f"{value:.4f}", (v.run_name, seed, name)
        row, cells = table[v.label], _markdown_row(md, v.label)
        assert (row["runs_done"], row["runs_failed"], cells[-1]) == ("2", "0", "2/2")
        for i, name in enumerate(METRICS):
            vals = [values[name] for values in per_seed]
            mean, sd = statistics.fmean(vals), statistics.stdev(vals)
            assert row[f"{name}_mean"] == f"{mean:.4f}" and row[f"{name}_sd"] == f"{sd:.4f}"
            assert cells[4 + i] == f"{mean:.1f} ± {sd:.1f}", (v.label, name)
        assert row["paper_AP"] == f"{v.paper.ap:.4f}" and cells[1] == f"{v.paper.ap:.1f}"  # type: ignore[union-attr]


def _file_times(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_sweep_writes_the_report_from_the_runs_evaluation_files(finished, tmp_path):
    settings, lines = finished
    out = Path(settings.out)
    assert "4 runs planned, 0 already finished, 4 to run (1 at a time)" in lines
    for name in ("ablation.md", "ablation.csv", "ablation_runs.csv", "ablation.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_report(out)
    # The same check with distinct figures in every evaluation file (an untrained model's are
    # all near zero): the report, rewritten from the runs, follows the files.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for k, metrics_file in enumerate(sorted(copy.glob("runs/*/seed*/eval/iter_*/metrics.json"))):
        metrics = json.loads(metrics_file.read_text())
        for j, (task, key) in enumerate(METRICS.values()):
            metrics[task][key] = 0.1 + 0.07 * k + 0.013 * j * (k % 3)
        metrics_file.write_text(json.dumps(metrics))
    moved = _settings(copy, settings.data)
    records = [(r, read_result(r.folder(copy))) for r in plan_runs(VARIANTS, SEEDS)]
    write_report(VARIANTS, records, moved)
    _check_report(copy)


_SWEEP_SCRIPT = """
import sys
from pathlib import Path
from maskrcnn.ablation import TABLES, DataPaths, SweepSettings, sweep, write_report
out, data = Path(sys.argv[1]), DataPaths.from_dir(sys.argv[2])
settings = SweepSettings(out=str(out), data=data, minutes_per_run=20.0, seeds=(0,), batch_size=2,
                         precision="fp32", max_iter=2, keep_checkpoints=True)
result = sweep(TABLES["2d"], settings, say=lambda line: print(line, flush=True))
write_report(TABLES["2d"], result.records, settings)
"""


def test_a_killed_sweep_resumes_without_retraining_finished_runs(data, tmp_path):
    shapes = str(Path(data.train_ann).parent)
    killed = tmp_path / "killed"
    script = tmp_path / "sweep_script.py"
    script.write_text(_SWEEP_SCRIPT)
    env = subprocess_env()
    first, second = (r.folder(killed) for r in plan_runs(VARIANTS, (0,)))
    with (tmp_path / "killed.log").open("w") as log:
        cmd = [sys.executable, str(script), str(killed), shapes]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            # Killed (SIGKILL: nothing can clean up) once the second run has checkpointed.
            while proc.poll() is None and not (second / "last.ckpt").is_file():
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert read_result(first).status == "done" and read_result(second).status == "pending"
    assert not (killed / "ablation.md").exists()
    # The sweep's folder is moved before the rerun: runs resume in their new place.
    out = tmp_path / "out"
    killed.rename(out)
    first, second = (r.folder(out) for r in plan_runs(VARIANTS, (0,)))
    before = _file_times(first)

    cmd = [sys.executable, str(script), str(out), shapes]
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "2 runs planned, 1 already finished, 1 to run (1 at a time)" in rerun.stdout
    assert f"{VARIANTS[0].run_name} seed 0: done before, skipped" in rerun.stdout
    assert _file_times(first) == before  # not trained, evaluated or rewritten again
    resumed = read_result(second).data
    assert resumed["status"] == "done" and resumed["iteration"] == 2
    assert resumed["resumed_from"] == 1  # from the killed run's checkpoint, not from scratch
    assert not killed.exists()
    table = {r["variant"]: r for r in _rows(out / "ablation.csv")}
    assert {k: r["runs_done"] for k, r in table.items()} == {v.label: "1" for v in VARIANTS}
    for v in VARIANTS:
        values = _eval_values(out, v.run_name, 0)
        assert table[v.label]["mask_AP_mean"] == f"{values['mask_AP']:.4f}"


def test_a_failing_variant_is_reported_and_the_others_still_run(data, tmp_path):
    """In worker subprocesses (two at a time): the broken variant's worker records its error."""
    bad = Variant("2d", "broken pooler", "c5", {"box_head.pooler.op": "nonsense"})
    good = VARIANTS[1]
    variants = (bad, good)
    out = tmp_path / "out"
    swept = _settings(out, data, seeds=(0,), parallel=2)
    lines: list[str] = []
    result = sweep(variants, swept, say=lines.append)
    assert not result.interrupted
    files = write_report(variants, result.records, swept)
    status = {run.run_name: rec.status for run, rec in result.records}
    assert status == {bad.run_name: "failed", good.run_name: "done"}
    (bad_run,) = plan_runs((bad,), (0,))
    assert "nonsense" in read_result(bad_run.folder(out)).data["error"]
    table = {r["variant"]: r for r in _rows(files.csv)}
    assert (table[bad.label]["runs_done"], table[bad.label]["runs_failed"]) == ("0", "1")
    assert table[bad.label]["mask_AP_mean"] == ""
    assert (table[good.label]["runs_done"], table[good.label]["runs_failed"]) == ("1", "0")
    values = _eval_values(out, good.run_name, 0)
    assert table[good.label]["mask_AP_mean"] == f"{values['mask_AP']:.4f}"
    md = files.markdown.read_text()
    cells = _markdown_row(md, bad.label)
    assert cells[4:8] == ["failed"] * 4 and cells[-1] == "0/1 (1 failed)"
    assert _markdown_row(md, good.label)[4] == f"{values['mask_AP']:.1f}"
    assert f"- {bad.label}, seed 0: failed: " in md and "nonsense" in md
    runs = {r["run_name"]: r["status"] for r in _rows(files.runs_csv)}
    assert runs == {bad.run_name: "failed", good.run_name: "done"}
    # A rerun skips the failed run (it is not retried unless asked) and trains nothing.
    again: list[str] = []
    sweep(variants, swept, say=again.append)
    assert "2 runs planned, 2 already finished, 0 to run (2 at a time)" in again


def _worker_pids(folder: Path) -> list[int]:
    """The worker processes (started by this test's sweep) training in ``folder``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"maskrcnn.ablation.worker" in args and str(folder).encode() in args:
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="needs Linux's /proc")
def test_an_interrupted_worker_is_resumed_not_failed(data, tmp_path):
    """SIGTERM to one worker: its run checkpoints, stays unfinished, and the next sweep resumes
    it (a worker's exit code 130 is an interruption, not a failure)."""
    out = tmp_path / "out"
    swept = _settings(out, data, seeds=(0,), max_iter=3, parallel=2)
    (run,) = plan_runs(VARIANTS[:1], (0,))
    folder = run.folder(out)

    def stop_worker() -> None:
        while not (folder / "last.ckpt").is_file() and not (folder / RESULT).is_file():
            time.sleep(0.02)
        for pid in _worker_pids(folder):
            os.kill(pid, signal.SIGTERM)

    watcher = threading.Thread(target=stop_worker, daemon=True)
    watcher.start()
    lines: list[str] = []
    result = sweep(VARIANTS[:1], swept, say=lines.append)
    watcher.join(timeout=60)
    assert result.interrupted, lines
    assert read_result(folder).status == "pending"
    assert (folder / "last.ckpt").is_file()
    with one_thread():
        again = sweep(VARIANTS[:1], _settings(out, data, seeds=(0,), max_iter=3))
    assert not again.interrupted
    resumed = read_result(folder).data
    assert resumed["status"] == "done" and resumed["iteration"] == 3
    assert resumed["resumed_from"] >= 1
