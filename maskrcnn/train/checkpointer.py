"""Saving a run's checkpoint: every rank's generator states, written by rank 0 alone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist

from maskrcnn.train import checkpoint as ckpt
from maskrcnn.train.build import TrainRun
from maskrcnn.train.checkpoint import Counters, TrainingState
from maskrcnn.train.hooks.base import LoopState
from maskrcnn.train.rng import RngState, capture_rng

logger = logging.getLogger("maskrcnn.train")


class RunCheckpointer:
    """Writes ``last.ckpt`` (and ``iter_*.ckpt``, ``checkpoint.keep`` of them) of a run.

    :meth:`save` must be called on every rank: the ranks' generator states are gathered
    (one collective), rank 0 writes, and all ranks wait for it (a barrier).
    """

    def __init__(self, run: TrainRun) -> None:
        self.run = run

    def save(self, loop: LoopState) -> Path | None:
        """Saves the state after ``loop.iteration`` steps; returns ``last.ckpt`` on rank 0."""
        info = self.run.dist
        rng = self._gather_rng()
        last = None
        if info.is_main:
            last, _ = ckpt.save_checkpoint(
                self.state(loop, rng), self.run.run_dir, keep=self.run.cfg.checkpoint.keep
            )
            logger.info("step %d: saved %s", loop.iteration, last)
        if info.distributed:
            dist.barrier()
        return last

    def state(self, loop: LoopState, rng: tuple[RngState, ...]) -> TrainingState:
        """The checkpoint of the run after ``loop.iteration`` steps."""
        run = self.run
        return TrainingState(
            iteration=loop.iteration,
            model=ckpt.unwrap_state_dict(run.model),
            optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(),
            scaler=run.scaler.state_dict() if run.scaler is not None else None,
            rng=rng,
            data=run.data.position(),
            model_config=run.model_cfg.to_dict(),
            categories=run.categories.to_dict(),
            train_config=run.cfg.to_dict(),
            counters=Counters(
                skipped_steps=loop.skipped_steps, elapsed_seconds=loop.elapsed_seconds()
            ),
        )

    def _gather_rng(self) -> tuple[RngState, ...]:
        mine = capture_rng()
        info = self.run.dist
        if not info.distributed:
            return (mine,)
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, mine)
        return tuple(gathered)
