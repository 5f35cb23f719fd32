"""Saving a run's checkpoint: every rank's generator states, rank 0 alone writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from train_setup import one_thread, tiny_config, write_shapes

from maskrcnn.train import checkpoint as ckpt
from maskrcnn.train.build import StartPoint, TrainRun, build_run
from maskrcnn.train.checkpointer import RunCheckpointer
from maskrcnn.train.distributed import DistInfo
from maskrcnn.train.hooks import LoopState
from maskrcnn.train.resumable_data import DataPosition


def test_checkpointer_writes_on_rank_0_only_and_resume_restores_the_start(
    tmp_path: Path,
) -> None:
    cfg = tiny_config(write_shapes(tmp_path / "data"), tmp_path / "run")
    with one_thread():
        run = build_run(cfg)
    run.close()
    run.data.next()
    loop = LoopState(iteration=7, max_iter=10, skipped_steps=2, elapsed_before=30.0)
    other_rank = RunCheckpointer(_as_rank(run, 1))
    assert other_rank.save(loop) is None and not (tmp_path / "run" / "last.ckpt").exists()
    last = RunCheckpointer(run).save(loop)
    assert last == tmp_path / "run" / "last.ckpt"
    state = ckpt.load_checkpoint(last)
    assert state.iteration == 7 and len(state.rng) == 1  # one rank's generators
    assert state.counters.skipped_steps == 2 and state.counters.elapsed_seconds >= 30.0
    assert state.data == DataPosition(0, 1, run.data.batches_per_epoch)
    assert [p.name for p in ckpt.list_iter_checkpoints(tmp_path / "run")] == ["iter_0000007.ckpt"]

    with one_thread():
        resumed = build_run(cfg, resume=True)
    resumed.close()
    assert resumed.start == StartPoint(7, state.counters, resumed=True)
    assert resumed.data.position() == state.data
    assert all(torch.equal(v, state.model[k]) for k, v in resumed.model.state_dict().items())
    with pytest.raises(ValueError, match="--resume"):
        build_run(cfg)  # the folder holds a run


def _as_rank(run: TrainRun, rank: int) -> TrainRun:
    """The same run as seen by another rank (of a one-process job: no collectives)."""
    return dataclasses.replace(run, dist=DistInfo(rank=rank, world_size=1))
