"""Training Mask R-CNN: ``train(TrainConfig) -> TrainResult``.

    data (COCO, aspect-grouped, seeded) -> model(images, targets) -> 5 losses -> SGD step

A :class:`Trainer` sets the run up with :func:`~maskrcnn.train.build.build_run` (which checks
the data, the configuration and, with ``resume``, the run folder's checkpoint before any step
is taken); :meth:`Trainer.run` then loops over optimisation steps (warm-up then step decay,
optional gradient clipping and mixed precision) and leaves everything else to its hooks
(:mod:`maskrcnn.train.hooks`): the progress bar, the non-finite streak, ``metrics.jsonl``
rows, periodic and final checkpoints, COCO evaluation, the final model, the time budget's
step count (:mod:`maskrcnn.train.budget`) and the curves.

Exact resumption: every step seeds the random generators from ``(seed, rank, step)``
(:func:`~maskrcnn.train.seeding.seed_step`) and the data order and augmentation are a
function of ``(seed, epoch, position)`` (``maskrcnn.data.loader``), so a run killed at any
point and resumed from its last checkpoint computes the same steps as one never interrupted.
The checkpoint also stores the generator states of every rank, which are restored.

Under ``torchrun`` the model is wrapped in DistributedDataParallel, every rank loads its
shard of each global batch, and only rank 0 writes files.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from maskrcnn.evaluation.coco_eval import EvalResult
from maskrcnn.train import checkpoint as ckpt
from maskrcnn.train.build import TrainRun, build_run
from maskrcnn.train.checkpointer import RunCheckpointer
from maskrcnn.train.config import TrainConfig
from maskrcnn.train.distributed import DistInfo, max_over_ranks
from maskrcnn.train.evaluate import evaluate_run, evaluation_images, time_evaluation
from maskrcnn.train.hooks.base import Hook, LoopState, StopReason
from maskrcnn.train.hooks.budget import BudgetHook, EvalTimer
from maskrcnn.train.hooks.checkpoint import CheckpointHook
from maskrcnn.train.hooks.curves import CURVES, CurvesHook
from maskrcnn.train.hooks.evaluation import EvalHook, FinalEvaluationError
from maskrcnn.train.hooks.final_model import FINAL_MODEL, FinalModelHook
from maskrcnn.train.hooks.metrics import MetricsHook
from maskrcnn.train.hooks.nonfinite import NonFiniteHook, NonFiniteLossError
from maskrcnn.train.hooks.progress import ProgressHook
from maskrcnn.train.hooks.threads import ThreadsHook
from maskrcnn.train.schedule import StepPlan
from maskrcnn.train.seeding import seed_step
from maskrcnn.train.signals import StopSignals
from maskrcnn.train.step import StepRunner
from maskrcnn.train.threads import ThreadChoice

__all__ = [
    "FINAL_MODEL",
    "FinalEvaluationError",
    "NonFiniteLossError",
    "TrainResult",
    "Trainer",
    "train",
]

logger = logging.getLogger("maskrcnn.train")


@dataclass
class TrainResult:
    """How a run ended.

    Attributes:
        run_dir: the run folder.
        iteration: steps completed.
        stop_reason: "max_iter", "time_budget" or "interrupted" (SIGINT/SIGTERM).
        final_model: ``model_final.safetensors`` (None when interrupted, and on ranks > 0).
        last_checkpoint: ``last.ckpt``.
        eval: the final evaluation (None without a validation set or when interrupted).
        skipped_steps: steps skipped for a non-finite loss or gradient, in the whole run.
        seconds: wall-clock time of this invocation's loop (final evaluation included).
        plan: the schedule the run followed (fitted to its time budget if it had one).
    """

    run_dir: Path
    iteration: int
    stop_reason: StopReason
    final_model: Path | None
    last_checkpoint: Path | None
    eval: EvalResult | None
    skipped_steps: int
    seconds: float
    plan: StepPlan


def train(cfg: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Trains a model as ``cfg`` says; with ``resume``, continues the run in ``cfg.out_dir``."""
    return Trainer(cfg, resume=resume).run()


class Trainer:
    """Set-up in the constructor (errors surface here, before training), loop in :meth:`run`.

    Attributes:
        setup: the run (model, optimizer, data, ...) from :func:`build_run`.
        step: runs one optimisation step.
        loop: the loop's state, shared with the hooks.
        hooks: called in list order (see :mod:`maskrcnn.train.hooks.base`).
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.setup: TrainRun = build_run(cfg, resume=resume)
        try:
            self._build_loop()
        except BaseException:
            self.setup.close()
            raise

    def _build_loop(self) -> None:
        cfg, run = self.cfg, self.setup
        self.step = StepRunner(
            run.train_model,
            run.optimizer,
            device=run.device,
            info=run.dist,
            precision=run.precision,
            scaler=run.scaler,
            clip_grad_norm=cfg.optim.clip_grad_norm,
        )
        self.loop = LoopState(
            iteration=run.start.iteration,
            max_iter=run.scheduler.plan.max_iter,
            start_iteration=run.start.iteration,
            skipped_steps=run.start.counters.skipped_steps,
            elapsed_before=run.start.counters.elapsed_seconds,
        )
        main = run.dist.is_main
        final_model = run.run_dir / FINAL_MODEL
        retry = (
            f"the trained model is {final_model}; evaluate it with: maskrcnn eval --weights "
            f"{final_model} --ann {cfg.data.val_ann} --images {cfg.data.val_images}"
        )
        timer = EvalTimer(functools.partial(evaluate_run, run))
        self.eval_hook = EvalHook(timer, period=cfg.eval.period, retry_hint=retry)
        self.final_model_hook = FinalModelHook(run.model, final_model, enabled=main)
        minutes = cfg.runtime.max_minutes
        self.budget_hook = BudgetHook(
            run.scheduler,
            budget_seconds=60 * minutes if minutes and cfg.schedule.fit_to_budget else None,
            timer=timer,
            eval_period=cfg.eval.period,
            probe=functools.partial(time_evaluation, run) if run.val_set is not None else None,
            eval_images=evaluation_images(run),
            agree=functools.partial(max_over_ranks, info=run.dist, device=run.device),
            record=self._record_plan,
        )
        self.hooks: list[Hook] = [
            ProgressHook(period=cfg.log.period, enabled=cfg.log.progress and main),
            NonFiniteHook(max_in_a_row=cfg.runtime.max_nonfinite, run_dir=run.run_dir, warn=main),
            MetricsHook(run.metrics, period=cfg.log.period),
            CheckpointHook(
                RunCheckpointer(run).save,
                period=cfg.checkpoint.period,
                last_checkpoint=run.run_dir / ckpt.LAST,
            ),
            self.final_model_hook,
            self.eval_hook,
            self.budget_hook,
            CurvesHook(run.metrics.path, run.run_dir / CURVES, enabled=main),
        ]
        if run.threads is not None:
            self.hooks.append(ThreadsHook(run.threads, record=self._record_threads))

    def _record_plan(self, plan: StepPlan, why: dict[str, float]) -> None:
        step = plan.revisions[-1][0] if plan.revisions else self.loop.iteration
        row = {"type": "plan", "iter": step, **why}
        row.update(plan.to_dict())
        self.setup.metrics.write(row)

    def _record_threads(self, step: int, choice: ThreadChoice) -> None:
        row = {"type": "threads", "iter": step, "threads": choice.threads}
        row["busy_elsewhere"] = choice.busy_elsewhere or 0.0
        self.setup.metrics.write(row)

    @property
    def model(self) -> nn.Module:
        """The (unwrapped) model being trained."""
        return self.setup.model

    @property
    def dist(self) -> DistInfo:
        return self.setup.dist

    @property
    def run_dir(self) -> Path:
        return self.setup.run_dir

    @property
    def iteration(self) -> int:
        """Steps completed."""
        return self.loop.iteration

    def run(self) -> TrainResult:
        """Trains to ``max_iter`` (or the time budget, or a stop signal) and finishes up."""
        try:
            with StopSignals() as signals:
                self._train(signals)
        finally:
            self.setup.close()
        return self._result()

    def _train(self, signals: StopSignals) -> None:
        run, loop = self.setup, self.loop
        loop.started = time.monotonic()
        minutes = self.cfg.runtime.max_minutes
        deadline = None if minutes is None else loop.started + 60 * minutes
        self._each(lambda hook: hook.before_train(loop))
        try:
            while loop.iteration < loop.max_iter:
                self._each(lambda hook: hook.before_step(loop))
                seed_step(self.cfg.runtime.seed, run.dist.rank, loop.iteration)
                lr = run.scheduler.get_last_lr()[0]
                batch = run.data.next()
                out = self.step(batch, stop_requested=lambda: signals.requested, deadline=deadline)
                run.scheduler.step()
                loop.record(out, lr=lr, epoch=run.data.epoch)
                self._each(lambda hook: hook.after_step(loop))
                if out.stop_signal or out.out_of_time:
                    loop.stop_reason = "interrupted" if out.stop_signal else "time_budget"
                    logger.warning("stopping at step %d (%s)", loop.iteration, loop.stop_reason)
                    break
            else:
                loop.stop_reason = "max_iter"
        except BaseException as err:
            loop.stop_reason = "nonfinite" if isinstance(err, NonFiniteLossError) else "error"
            raise
        finally:
            self._each(lambda hook: hook.after_train(loop))

    def _each(self, call: Callable[[Hook], None]) -> None:
        for hook in self.hooks:
            call(hook)

    def _result(self) -> TrainResult:
        loop = self.loop
        assert loop.stop_reason is not None
        return TrainResult(
            run_dir=self.run_dir,
            iteration=loop.iteration,
            stop_reason=loop.stop_reason,
            final_model=self.final_model_hook.written,
            last_checkpoint=self.run_dir / ckpt.LAST,
            eval=self.eval_hook.final,
            skipped_steps=loop.skipped_steps,
            seconds=time.monotonic() - loop.started,
            plan=self.setup.scheduler.plan,
        )
