"""Training Mask R-CNN: ``train(TrainConfig) -> TrainResult``.

    data (COCO, aspect-grouped, seeded) -> model(images, targets) -> 5 losses -> SGD step

One :class:`Trainer` does the set-up (which checks the data, the configuration and, with
``resume``, the run folder's checkpoint before any step is taken) and then :meth:`Trainer.run`
loops over optimisation steps: warm-up then step decay, optional gradient clipping and mixed
precision, periodic checkpoints and COCO evaluation, metrics in ``metrics.jsonl``.

Exact resumption: every step seeds the random generators from ``(seed, rank, step)``
(:func:`~maskrcnn.train.runtime.seed_step`) and the data order and augmentation are a
function of ``(seed, epoch, position)`` (``maskrcnn.data.loader``), so a run killed at any
point and resumed from its last checkpoint computes the same steps as one never interrupted.
The checkpoint also stores the generator states of every rank, which are restored.

Under ``torchrun`` the model is wrapped in DistributedDataParallel, every rank loads its
shard of each global batch, and only rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.loader import build_train_loader
from maskrcnn.data.transforms import train_transforms
from maskrcnn.evaluation.coco_eval import EvalResult, evaluate_coco
from maskrcnn.modeling import build_model
from maskrcnn.train import checkpoint as ckpt
from maskrcnn.train import state as run_state
from maskrcnn.train.config import TrainConfig
from maskrcnn.train.runtime import (
    MetricsWriter,
    StopSignals,
    TrainData,
    amp_dtype,
    init_distributed,
    resolve_device,
    seed_step,
)
from maskrcnn.train.schedule import build_optimization
from maskrcnn.train.step import StepRunner

logger = logging.getLogger("maskrcnn.train")

FINAL_MODEL = "model_final.safetensors"


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row; the run stopped (its last checkpoint is kept)."""


@dataclass
class TrainResult:
    """How a run ended.

    Attributes:
        run_dir: the run folder.
        iteration: steps completed.
        stop_reason: "max_iter", "time_budget" or "interrupted" (SIGINT/SIGTERM).
        final_model: ``model_final.safetensors`` (None when interrupted).
        last_checkpoint: ``last.ckpt``.
        eval: the final evaluation (None without a validation set or when interrupted).
        skipped_steps: steps skipped for a non-finite loss or gradient, in the whole run.
        seconds: wall-clock time of this invocation.
    """

    run_dir: Path
    iteration: int
    stop_reason: str
    final_model: Path | None
    last_checkpoint: Path | None
    eval: EvalResult | None
    skipped_steps: int
    seconds: float


def train(cfg: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Trains a model as ``cfg`` says; with ``resume``, continues the run in ``cfg.out_dir``."""
    return Trainer(cfg, resume=resume).run()


class Trainer:
    """Set-up in the constructor (errors surface here, before training), loop in :meth:`run`.

    Attributes:
        model: the (unwrapped) model being trained.
        iteration: steps completed.
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.out_dir)
        self._start = time.monotonic()
        wants_cuda = cfg.device.startswith("cuda") or (
            cfg.device == "auto" and torch.cuda.is_available()
        )
        self.dist = init_distributed(wants_cuda)
        try:
            self._setup(resume)
        except BaseException:
            self._close_group()
            raise

    # ------------------------------------------------------------------------------------------
    # Set-up

    def _setup(self, resume: bool) -> None:
        cfg, info = self.cfg, self.dist
        self.device = resolve_device(cfg.device, info)
        self.amp = amp_dtype(cfg.amp, self.device)
        if cfg.batch_size % info.world_size:
            raise ValueError(
                f"batch_size {cfg.batch_size} is not divisible by {info.world_size} processes"
            )
        state = run_state.previous_run(self.run_dir, cfg, resume=resume)
        sizes = cfg.model_config().input  # checks the overrides, too
        self.train_set = CocoDataset(
            cfg.train_ann,
            cfg.train_images,
            transforms=train_transforms(tuple(sizes.min_size), sizes.max_size, cfg.flip_prob),
            skip_bad_images=cfg.skip_bad_images,
        )
        self.categories = self.train_set.categories
        if self.categories.num_categories == 0:
            raise ValueError(f"{cfg.train_ann}: no categories to train on")
        self.val_set = None
        if cfg.val_ann is not None and cfg.val_images is not None:
            self.val_set = CocoDataset(cfg.val_ann, cfg.val_images, categories=self.categories)
        self.model_cfg = cfg.model_config(
            self.categories.num_classes, self.categories.names_by_label
        )
        if state is not None:
            run_state.check_compatible(
                state,
                where=str(self.run_dir / ckpt.LAST),
                categories=self.categories,
                model_cfg=self.model_cfg,
                train_ann=cfg.train_ann,
            )

        torch.manual_seed(cfg.seed)
        model = build_model(self.model_cfg)
        if cfg.imagenet and state is None:
            from maskrcnn.weights.pretrained import load_imagenet_backbone

            load_imagenet_backbone(model, cfg.imagenet)
        model.to(self.device)
        if info.distributed and cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.optimizer, self.scheduler = build_optimization(model, cfg)
        use_scaler = self.amp == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        loader = build_train_loader(
            self.train_set,
            batch_size=cfg.batch_size // info.world_size,
            num_workers=cfg.num_workers,
            seed=cfg.seed,
            rank=info.rank,
            world_size=info.world_size,
            pin_memory=self.device.type == "cuda",
        )
        self.data = TrainData(loader)
        self.iteration = 0
        self.skipped = 0
        self.elapsed_before = 0.0
        if state is not None:
            run_state.restore(
                state,
                model=model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler,
                data=self.data,
                rank=info.rank,
            )
            self.iteration = int(state.iteration)
            self.skipped = int(state.counters.get("skipped_steps", 0))
            self.elapsed_before = float(state.counters.get("elapsed_seconds", 0.0))
        train_model: nn.Module = model
        if info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.step = StepRunner(
            train_model,
            self.optimizer,
            device=self.device,
            info=info,
            amp=self.amp,
            scaler=self.scaler,
            clip_grad_norm=cfg.clip_grad_norm,
        )
        self.metrics = MetricsWriter(self.run_dir, enabled=info.is_main)
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.run_dir)
            self.metrics.truncate_after(self.iteration)
            text = json.dumps(cfg.to_dict(), indent=1) + "\n"
            (self.run_dir / "train_config.json").write_text(text)
        logger.info(
            f"training {cfg.preset} ({self.categories.num_categories} classes) on "
            f"{len(self.train_set)} images, {cfg.batch_size} per step over {info.world_size} "
            f"process(es), lr {cfg.lr:.4g}, {self.device}, steps {self.iteration}..{cfg.max_iter}"
        )

    # ------------------------------------------------------------------------------------------
    # The loop

    def run(self) -> TrainResult:
        """Trains to ``max_iter`` (or the time budget, or a stop signal) and finishes up."""
        try:
            with StopSignals() as signals:
                return self._run(signals)
        finally:
            self.metrics.close()
            self._close_group()

    def _run(self, signals: StopSignals) -> TrainResult:
        cfg = self.cfg
        start = self._start = time.monotonic()
        deadline = None if cfg.max_minutes is None else start + 60 * cfg.max_minutes
        saved_at = self.iteration if (self.run_dir / ckpt.LAST).exists() else None
        evaluated: tuple[int, EvalResult | None] | None = None
        streak: list[int] = []
        window: list[list[float]] = []
        names: list[str] = []
        reason = "max_iter"
        bar = tqdm(
            total=cfg.max_iter,
            initial=self.iteration,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            disable=not (cfg.progress and self.dist.is_main),
        )
        with bar:
            while self.iteration < cfg.max_iter:
                seed_step(cfg.seed, self.dist.rank, self.iteration)
                lr = self.scheduler.get_last_lr()[0]
                batch = self.data.next()
                out = self.step(batch, stop_requested=lambda: signals.requested, deadline=deadline)
                names = out.names
                self.scheduler.step()
                self.iteration += 1
                bar.update(1)
                if out.skipped:
                    streak.append(self.iteration)
                    self.skipped += 1
                    self._warn_nonfinite(streak)
                    if len(streak) >= cfg.max_nonfinite:
                        if window:
                            self._log(window, names, lr)
                        raise NonFiniteLossError(run_state.diverged_message(self.run_dir, streak))
                else:
                    streak.clear()
                    window.append(out.values)
                if self.iteration % cfg.log_period == 0 or self.iteration == cfg.max_iter:
                    self._log(window, names, lr)
                    bar.set_postfix_str(_postfix(window, names), refresh=False)
                    window = []
                if self.iteration % cfg.checkpoint_period == 0 and not streak:
                    self._save()
                    saved_at = self.iteration
                if cfg.eval_period and self.iteration % cfg.eval_period == 0:
                    evaluated = (self.iteration, self._evaluate())
                if out.stop_signal or out.out_of_time:
                    reason = "interrupted" if out.stop_signal else "time_budget"
                    logger.warning("stopping at step %d (%s)", self.iteration, reason)
                    break
        if window:
            self._log(window, names, self.scheduler.get_last_lr()[0])
        if saved_at != self.iteration:
            self._save()
        result, final = None, None
        if reason != "interrupted":
            fresh = evaluated is not None and evaluated[0] == self.iteration
            result = evaluated[1] if fresh else self._evaluate()
            if self.dist.is_main:
                final = ckpt.export_model(self.model, self.run_dir / FINAL_MODEL)
                logger.info("wrote %s", final)
                self._plot()
        return TrainResult(
            run_dir=self.run_dir,
            iteration=self.iteration,
            stop_reason=reason,
            final_model=final,
            last_checkpoint=self.run_dir / ckpt.LAST,
            eval=result,
            skipped_steps=self.skipped,
            seconds=time.monotonic() - start,
        )

    # ------------------------------------------------------------------------------------------
    # Around the loop

    def _save(self) -> None:
        """Writes ``last.ckpt`` (rank 0) with every rank's generator states."""
        rng = [ckpt.capture_rng()]
        if self.dist.distributed:
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if self.dist.is_main:
            state = ckpt.TrainingState(
                iteration=self.iteration,
                model=ckpt.unwrap_state_dict(self.model),
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler is not None else None,
                rng={"ranks": rng},
                data=self.data.state(),
                model_config=self.model_cfg.to_dict(),
                categories=self.categories.to_dict(),
                train_config=self.cfg.to_dict(),
                counters={
                    "skipped_steps": self.skipped,
                    "elapsed_seconds": self.elapsed_before + time.monotonic() - self._start,
                },
            )
            last, _ = ckpt.save_checkpoint(state, self.run_dir, keep=self.cfg.keep_checkpoints)
            logger.info("step %d: saved %s", self.iteration, last)
        if self.dist.distributed:
            dist.barrier()

    def _evaluate(self) -> EvalResult | None:
        if self.val_set is None:
            return None
        main = self.dist.is_main
        out = self.run_dir / "eval" / f"iter_{self.iteration:07d}"
        result = evaluate_coco(
            self.model,
            self.val_set,
            categories=self.categories,
            out_dir=out if main else None,
            max_images=self.cfg.eval_max_images,
            progress=self.cfg.progress and main,
        )
        self.model.train()
        if main:
            self.metrics.write({"type": "eval", "iter": self.iteration, **result.flat()})
            ap = f"bbox AP {100 * result.bbox.ap:.1f}, segm AP {100 * result.segm.ap:.1f}"
            logger.info(f"step {self.iteration}: {ap}")
        return result

    def _log(self, window: list[list[float]], names: list[str], lr: float) -> None:
        if not self.dist.is_main:
            return
        row: dict[str, Any] = {"type": "train", "iter": self.iteration, "lr": lr}
        if window:
            for k, name in enumerate(names):
                row[name] = sum(v[k] for v in window) / len(window)
        elapsed = self.elapsed_before + time.monotonic() - self._start
        row.update(time=round(elapsed, 3), epoch=self.data.epoch, skipped_total=self.skipped)
        self.metrics.write(row)

    def _warn_nonfinite(self, streak: list[int]) -> None:
        if self.dist.is_main:
            warnings.warn(
                f"step {streak[-1]}: non-finite loss or gradient, step skipped "
                f"({len(streak)} in a row, {self.skipped} in all; stop at "
                f"{self.cfg.max_nonfinite} in a row)",
                RuntimeWarning,
                stacklevel=2,
            )

    def _plot(self) -> None:
        if not self.metrics.path.is_file():
            return
        from maskrcnn.viz.curves import plot_curves

        try:
            plot_curves(self.metrics.path, self.run_dir / "curves.png")
        except (ValueError, OSError) as err:
            logger.warning("could not plot the training curves: %s", err)

    def _close_group(self) -> None:
        if self.dist.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _postfix(window: list[list[float]], names: list[str]) -> str:
    if not window:
        return "skipped"
    mean = [sum(v[k] for v in window) / len(window) for k in range(len(names))]
    short = {n: n.removeprefix("loss_") for n in names}
    return " ".join(f"{short[n]}={m:.3f}" for n, m in zip(names, mean))
