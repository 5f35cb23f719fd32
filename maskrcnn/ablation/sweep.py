"""Running an ablation: one training per (model, seed), each in its own folder, resumable.

Layout of the output folder ``OUT``::

    OUT/shapes/                      the default data (when no data is given)
    OUT/runs/<run_name>/seed<k>/     one run: spec.json, the trainer's files, result.json
    OUT/ablation.md, .csv, .png      the report (maskrcnn.ablation.report)

``spec.json`` holds the run's :class:`~maskrcnn.train.config.TrainConfig` and its time budget;
``result.json`` is written when the run ends: ``{"status": "done", "eval": <the final
evaluation's metrics.json, relative to the run folder>, ...}`` or ``{"status": "failed",
"error": ...}``. A rerun of the sweep skips runs with a result (``retry_failed`` reruns failed
ones), resumes runs with a ``last.ckpt`` (the remaining time budget: the budget minus the
training time the checkpoint counted) and starts the others. A run that trained to the end
but was killed before its result was written is completed from its files (its final model
is evaluated again if the evaluation is missing), never trained further.

Runs execute in this process one after the other, or (``parallel`` > 1) as that many worker
subprocesses (``python -m maskrcnn.ablation.worker RUN_DIR --cpu N``), each pinned to one
core with one thread.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskrcnn.ablation.variants import IMAGE_SIDE, Variant
from maskrcnn.train.checkpoint import LAST, load_checkpoint
from maskrcnn.train.config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LogConfig,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
)
from maskrcnn.train.model_spec import ModelSpec

logger = logging.getLogger("maskrcnn.ablation")

SPEC = "spec.json"
RESULT = "result.json"
RUN_LOG = "log.txt"
FINAL_MODEL = "model_final.safetensors"
# The worker's exit code when its run was interrupted (SIGINT/SIGTERM) and left no result.
INTERRUPTED_EXIT = 130

# The default data: 128x128 shapes, objects of ~10 to ~64 pixels (see default_data()).
DEFAULT_TRAIN_IMAGES = 1000
DEFAULT_VAL_IMAGES = 150
DEFAULT_DATA_SEED = 0

# Training steps per minute of each stand-in on one core of the project's machine (batch 8,
# bf16 autocast, 128x128 images), used to place the schedule inside the time budget.
STEPS_PER_MINUTE: dict[str, float] = {"c4": 40.0, "c5": 45.0, "fpn": 30.0}


@dataclass(frozen=True)
class DataPaths:
    """The COCO files every run trains and evaluates on."""

    train_ann: str
    train_images: str
    val_ann: str
    val_images: str

    @staticmethod
    def from_dir(folder: str | Path) -> DataPaths:
        """The ``maskrcnn data shapes`` layout: DIR/train.json, DIR/val.json, DIR/images."""
        d = Path(folder)
        missing = [p for p in (d / "train.json", d / "val.json") if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"--data {folder}: missing {[str(p) for p in missing]}")
        return DataPaths(
            str(d / "train.json"), str(d / "images"), str(d / "val.json"), str(d / "images")
        )


@dataclass(frozen=True)
class SweepSettings:
    """What every run of a sweep shares (only the ablated model setting differs).

    Attributes:
        out: the sweep's folder.
        data: the data of every run.
        minutes_per_run: time budget of one run, its final evaluation included.
        seeds: the seeds; each variant is trained once per seed.
        batch_size, optimizer, lr, weight_decay, precision: the recipe (the demo's).
        warmup_fraction: warm-up steps as a fraction of the run's steps.
        lr_steps: step-decay milestones as fractions of the run's steps.
        max_iter: the most steps of a run (None: three times ``minutes_per_run`` times the
            backbone's :data:`STEPS_PER_MINUTE`, a ceiling). The time-budgeted schedule
            (``schedule.fit_to_budget``) fits every run's steps to ``minutes_per_run`` on the
            machine, so each run warms up, decays and evaluates inside its budget.
        parallel: runs at a time (> 1: worker subprocesses pinned to one core each).
        retry_failed: rerun runs that failed before.
        keep_checkpoints: keep ``last.ckpt`` of finished runs (default: removed, the final
            model and the evaluation stay).
        backbone: pretrained weights every run's ResNet starts from (``model.imagenet``: a
            torchvision ResNet file, a published ImageNet name, or one of our FPN detectors'
            model files, whose ResNet is taken); None: from scratch.
    """

    out: str
    data: DataPaths
    minutes_per_run: float
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.05
    precision: str = "bf16"
    warmup_fraction: float = 0.07
    lr_steps: tuple[float, ...] = (0.8, 0.95)
    max_iter: int | None = None
    parallel: int = 1
    retry_failed: bool = False
    keep_checkpoints: bool = False
    backbone: str | None = None

    def __post_init__(self) -> None:
        if not self.minutes_per_run > 0:
            raise ValueError(f"--minutes-per-run: must be positive, got {self.minutes_per_run}")
        if not self.seeds:
            raise ValueError("--seeds: at least one seed")
        if self.parallel < 1:
            raise ValueError(f"--parallel: must be at least 1, got {self.parallel}")
        if self.max_iter is not None and self.max_iter < 1:
            raise ValueError(f"--max-iter: must be at least 1, got {self.max_iter}")


@dataclass(frozen=True)
class PlannedRun:
    """One training of a sweep: a model (run name) and a seed."""

    run_name: str
    seed: int
    variant: Variant

    def folder(self, out: str | Path) -> Path:
        return Path(out) / "runs" / self.run_name / f"seed{self.seed}"


def plan_runs(variants: Sequence[Variant], seeds: Sequence[int]) -> list[PlannedRun]:
    """One run per distinct (run name, seed); rows with the same model share their runs."""
    planned: dict[tuple[str, int], PlannedRun] = {}
    for seed in seeds:
        for v in variants:
            planned.setdefault((v.run_name, seed), PlannedRun(v.run_name, seed, v))
    return list(planned.values())


def steps_for(variant: Variant, settings: SweepSettings) -> int:
    """The steps of one run (see :attr:`SweepSettings.max_iter`)."""
    if settings.max_iter is not None:
        return settings.max_iter
    return max(10, round(3 * STEPS_PER_MINUTE[variant.backbone] * settings.minutes_per_run))


def train_config(run: PlannedRun, settings: SweepSettings) -> TrainConfig:
    """The run's training configuration: the shared recipe and the variant's model."""
    steps = steps_for(run.variant, settings)
    data = settings.data
    return TrainConfig(
        data=DataConfig(
            train_ann=data.train_ann,
            train_images=data.train_images,
            val_ann=data.val_ann,
            val_images=data.val_images,
            batch_size=settings.batch_size,
            num_workers=0,  # 128x128 PNGs decode in microseconds; no second process per run
        ),
        out_dir=str(run.folder(settings.out)),
        model=ModelSpec(
            preset=run.variant.preset,
            overrides=run.variant.model_overrides,
            imagenet=settings.backbone,
        ),
        optim=OptimConfig(
            kind=settings.optimizer,  # type: ignore[arg-type]
            base_lr=settings.lr,
            base_batch_size=settings.batch_size,
            weight_decay=settings.weight_decay,
        ),
        schedule=ScheduleConfig(
            max_iter=steps,
            warmup_iters=round(settings.warmup_fraction * steps),
            lr_steps=settings.lr_steps,
        ),
        checkpoint=CheckpointConfig(period=max(1, steps // 5), keep=0),
        eval=EvalConfig(period=0),
        log=LogConfig(period=max(1, min(20, steps // 10)), progress=False),
        runtime=RuntimeConfig(
            device="cpu",
            precision=settings.precision,  # type: ignore[arg-type]
            seed=run.seed,
            max_minutes=settings.minutes_per_run,
        ),
    )


# ----------------------------------------------------------------------------------------------
# One run


@dataclass
class RunRecord:
    """What ``result.json`` says about a run (``status``: done, failed, interrupted, pending)."""

    folder: Path
    status: str
    data: dict[str, Any] = field(default_factory=dict)


def read_result(folder: Path) -> RunRecord:
    """The run's ``result.json`` (status "pending" without one)."""
    path = folder / RESULT
    if not path.is_file():
        return RunRecord(folder, "pending")
    data = json.loads(path.read_text())
    return RunRecord(folder, str(data.get("status", "pending")), data)


def write_spec(folder: Path, cfg: TrainConfig, run: PlannedRun) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "table": run.variant.table,
        "label": run.variant.label,
        "run_name": run.run_name,
        "seed": run.seed,
        "minutes": cfg.runtime.max_minutes,
        "train_config": cfg.to_dict(),
    }
    _write_json(folder / SPEC, spec)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def run_one(folder: str | Path, *, keep_checkpoints: bool = False) -> RunRecord:
    """Trains (or resumes, or completes) the run in ``folder`` from its ``spec.json``.

    Errors are caught and recorded (``status: failed``); an interrupted training (SIGINT or
    SIGTERM) leaves no result, so that the next sweep resumes it.
    """
    folder = Path(folder)
    try:
        spec = json.loads((folder / SPEC).read_text())
        # The run trains in its folder, wherever the sweep's folder is now (moved or copied).
        cfg = TrainConfig.from_dict(spec["train_config"]).with_values({"out_dir": str(folder)})
        record = _train_or_complete(folder, cfg, float(spec["minutes"]))
    except Exception as err:  # a failing variant is reported, the sweep goes on
        logger.error("run %s failed: %s", folder, err)
        record = RunRecord(
            folder,
            "failed",
            {
                "status": "failed",
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-4000:],
            },
        )
    if record.status in ("done", "failed"):
        _write_json(folder / RESULT, record.data)
        if record.status == "done" and not keep_checkpoints:
            (folder / LAST).unlink(missing_ok=True)
    return record


def _train_or_complete(folder: Path, cfg: TrainConfig, minutes: float) -> RunRecord:
    from maskrcnn.train.trainer import Trainer

    last = folder / LAST
    if (folder / FINAL_MODEL).is_file() and last.is_file():
        return _complete(folder, cfg, int(load_checkpoint(last).iteration))
    elapsed = 0.0
    if last.is_file():
        elapsed = float(load_checkpoint(last).counters.elapsed_seconds)
    remaining = max(minutes * 60 - elapsed, 1.0) / 60
    cfg = cfg.with_values({"runtime.max_minutes": remaining})
    trainer = Trainer(cfg, resume=last.is_file())
    start = trainer.setup.start.iteration
    result = trainer.run()
    if result.stop_reason == "interrupted":
        return RunRecord(folder, "interrupted")
    return _done(folder, result.iteration, str(result.stop_reason), start)


def eval_file(iteration: int) -> str:
    """The trainer's final evaluation file, relative to the run folder."""
    return f"eval/iter_{iteration:07d}/metrics.json"


def _done(folder: Path, iteration: int, stop_reason: str, resumed_from: int) -> RunRecord:
    rel = eval_file(iteration)
    if not (folder / rel).is_file():
        raise RuntimeError(f"{folder}: the run ended ({stop_reason}) without {rel}")
    seconds = None
    if (folder / LAST).is_file():
        seconds = float(load_checkpoint(folder / LAST).counters.elapsed_seconds)
    data = {
        "status": "done",
        "eval": rel,
        "iteration": iteration,
        "stop_reason": stop_reason,
        "resumed_from": resumed_from,
        "train_seconds": seconds,
    }
    return RunRecord(folder, "done", data)


def _complete(folder: Path, cfg: TrainConfig, iteration: int) -> RunRecord:
    """A run that trained to the end but has no result: evaluate its final model if needed."""
    rel = eval_file(iteration)
    if not (folder / rel).is_file():
        from maskrcnn.evaluation.coco_eval import evaluate_coco
        from maskrcnn.weights.native import load_model

        assert cfg.data.val_ann is not None and cfg.data.val_images is not None
        model = load_model(folder / FINAL_MODEL)
        evaluate_coco(
            model,
            (cfg.data.val_ann, cfg.data.val_images),
            out_dir=(folder / rel).parent,
            progress=False,
        )
    return _done(folder, iteration, "completed_from_files", iteration)


# ----------------------------------------------------------------------------------------------
# The sweep


@dataclass
class SweepResult:
    """Every planned run's record, and the wall-clock minutes of this invocation."""

    records: list[tuple[PlannedRun, RunRecord]]
    minutes: float
    interrupted: bool = False


def sweep(
    variants: Sequence[Variant],
    settings: SweepSettings,
    *,
    say: Callable[[str], None] = print,
) -> SweepResult:
    """Runs every planned run that has no result yet; returns all runs' records."""
    start = time.monotonic()
    planned = plan_runs(variants, settings.seeds)
    todo: list[PlannedRun] = []
    for run in planned:
        folder = run.folder(settings.out)
        record = read_result(folder)
        if record.status == "done" or (record.status == "failed" and not settings.retry_failed):
            say(f"  {run.run_name} seed {run.seed}: {record.status} before, skipped")
            continue
        cfg = train_config(run, settings)
        if not (folder / SPEC).is_file() or record.status == "failed":
            write_spec(folder, cfg, run)
        todo.append(run)
    say(
        f"{len(planned)} runs planned, {len(planned) - len(todo)} already finished, "
        f"{len(todo)} to run ({settings.parallel} at a time)"
    )
    interrupted = False
    try:
        if settings.parallel == 1:
            for i, run in enumerate(todo):
                say(f"[{i + 1}/{len(todo)}] {run.run_name} seed {run.seed} ...")
                record = run_one(
                    run.folder(settings.out), keep_checkpoints=settings.keep_checkpoints
                )
                say(f"    {_summary(record)}")
                if record.status == "interrupted":
                    interrupted = True
                    break
        else:
            interrupted = _parallel(todo, settings, say)
    except KeyboardInterrupt:
        interrupted = True
    records = [(run, read_result(run.folder(settings.out))) for run in planned]
    return SweepResult(records, (time.monotonic() - start) / 60, interrupted)


def _summary(record: RunRecord) -> str:
    if record.status == "done":
        return f"done: {record.data['iteration']} steps ({record.data['stop_reason']})"
    if record.status == "failed":
        return f"FAILED: {record.data.get('error')}"
    return record.status


def _parallel(todo: list[PlannedRun], settings: SweepSettings, say: Callable[[str], None]) -> bool:
    """Runs ``todo`` in worker subprocesses, ``settings.parallel`` at a time, one core each.

    A worker that exits without a result is failed, unless its run was interrupted (exit code
    :data:`INTERRUPTED_EXIT`): that run is left to resume, no new runs start, and the sweep
    returns interrupted (True) once the running ones end.
    """
    cores = sorted(os.sched_getaffinity(0))
    slots = [cores[i % len(cores)] for i in range(settings.parallel)]
    queue = list(todo)
    running: dict[int, tuple[subprocess.Popen[bytes], PlannedRun, Any]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = 0
    interrupted = False
    try:
        while queue or running:
            for slot, core in enumerate(slots):
                if slot in running or not queue:
                    continue
                run = queue.pop(0)
                folder = run.folder(settings.out)
                log = open(folder / RUN_LOG, "ab")  # noqa: SIM115 (closed when the run ends)
                cmd = [sys.executable, "-m", "maskrcnn.ablation.worker", str(folder)]
                cmd += ["--cpu", str(core), "--parent", str(os.getpid())]
                if settings.keep_checkpoints:
                    cmd.append("--keep-checkpoints")
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                running[slot] = (proc, run, log)
                say(f"  start {run.run_name} seed {run.seed} on core {core}")
            time.sleep(0.2)
            for slot in list(running):
                proc, run, log = running[slot]
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del running[slot]
                done += 1
                folder = run.folder(settings.out)
                record = read_result(folder)
                if record.status == "pending" and code == INTERRUPTED_EXIT:
                    # SIGINT/SIGTERM: the trainer checkpointed; the next sweep resumes the run.
                    # The runs under way finish, no new ones start.
                    record = RunRecord(folder, "interrupted")
                    interrupted = True
                    queue.clear()
                elif record.status == "pending":  # a crash (or kill) before any result
                    data = {
                        "status": "failed",
                        "error": f"worker exited with code {code}; see {folder / RUN_LOG}",
                    }
                    _write_json(folder / RESULT, data)
                    record = RunRecord(folder, "failed", data)
                say(f"[{done}/{len(todo)}] {run.run_name} seed {run.seed}: {_summary(record)}")
    except KeyboardInterrupt:
        for proc, _, _log in running.values():
            proc.terminate()  # SIGTERM: the trainer checkpoints and stops cleanly
        for proc, _, log in running.values():
            proc.wait()
            log.close()
        return True
    return interrupted


def default_data(out: str | Path, say: Callable[[str], None] = print) -> DataPaths:
    """``OUT/shapes``: the default data, written once (kept by later sweeps).

    128x128 images with 0-8 objects of radius 5 to 32 pixels (log-uniform, so most are
    small): at stride 32 one feature cell is 32 pixels, so RoIPool's snapping of an RoI to
    the cell grid moves its edges by up to 16 pixels, a large fraction of a 10-64 pixel
    object; at stride 16 (C4) by up to 8.
    """
    from maskrcnn.data.shapes import write_shapes_dataset

    folder = Path(out) / "shapes"
    if not (folder / "val.json").is_file():
        write_shapes_dataset(
            folder,
            train=DEFAULT_TRAIN_IMAGES,
            val=DEFAULT_VAL_IMAGES,
            seed=DEFAULT_DATA_SEED,
            image_size=(IMAGE_SIDE, IMAGE_SIDE),
        )
        say(f"wrote the default data to {folder}")
    say(
        f"data: {folder} (synthetic shapes, {DEFAULT_TRAIN_IMAGES} train / "
        f"{DEFAULT_VAL_IMAGES} val images of {IMAGE_SIDE}x{IMAGE_SIDE}, objects of radius "
        "5-32 px; made by maskrcnn ablate since no --data was given)"
    )
    return DataPaths.from_dir(folder)
