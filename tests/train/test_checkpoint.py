"""Training checkpoints: atomic writes, weights_only round trips, and exact resumption."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from train_setup import (
    TINY_MODEL,
    assignments,
    cli_args,
    one_thread,
    subprocess_env,
    tiny_config,
    train_command,
    write_shapes,
)

from maskrcnn.train import checkpoint as ckpt
from maskrcnn.train.checkpoint import Counters
from maskrcnn.train.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from maskrcnn.train.resumable_data import DataPosition
from maskrcnn.train.rng import RngState, capture_rng, restore_rng
from maskrcnn.train.schedule import WarmupMultiStepLR, build_optimization
from maskrcnn.train.trainer import train


def _state(iteration: int, value: float = 0.0) -> ckpt.TrainingState:
    linear = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(linear.parameters(), lr=0.1, momentum=0.9)
    linear(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    with torch.no_grad():
        linear.weight.fill_(value)
    return ckpt.TrainingState(
        iteration=iteration,
        model=linear.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler={"last_iter": iteration},
        scaler=None,
        rng=(capture_rng(),),
        data=DataPosition(epoch=1, batch=2, batches_per_epoch=4),
        model_config={"num_classes": 3},
        categories={"category_ids": [1, 2], "names": ["a", "b"]},
        train_config={"train_ann": "x"},
        counters=Counters(skipped_steps=1),
    )


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    state = _state(7, value=0.5)
    last, numbered = ckpt.save_checkpoint(state, tmp_path, keep=2)
    assert numbered == tmp_path / "iter_0000007.ckpt"
    torch.load(last, weights_only=True)  # nothing but allowed types inside
    loaded = ckpt.load_checkpoint(numbered)
    assert loaded.iteration == 7 and loaded.counters == Counters(skipped_steps=1)
    assert torch.equal(loaded.model["weight"], torch.full((2, 3), 0.5))
    assert loaded.optimizer["state"][0]["momentum_buffer"].shape == (2, 3)
    assert loaded.data == state.data and loaded.categories == state.categories


def test_interrupted_write_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch) -> None:
    ckpt.save_checkpoint(_state(5, value=1.0), tmp_path)
    before = (tmp_path / "last.ckpt").read_bytes()

    def crash(src: str, dst: str) -> None:  # the temporary file is complete at this point
        assert Path(src).stat().st_size > 0
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.save_checkpoint(_state(10, value=2.0), tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no partial file
    assert (tmp_path / "last.ckpt").read_bytes() == before
    assert ckpt.load_checkpoint(tmp_path / "last.ckpt").iteration == 5


def test_crash_while_serialising_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    ckpt.save_checkpoint(_state(5), tmp_path)

    def half_write(obj, handle) -> None:
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save_checkpoint(_state(10), tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert ckpt.load_checkpoint(tmp_path / "last.ckpt").iteration == 5


def test_stale_temporaries_pruning_and_bad_files(tmp_path: Path) -> None:
    (tmp_path / ".tmp-last.ckpt.abc123").write_bytes(b"killed mid-write")
    assert [p.name for p in ckpt.remove_stale_temporaries(tmp_path)] == [".tmp-last.ckpt.abc123"]
    for i in (5, 10, 15):
        ckpt.save_checkpoint(_state(i), tmp_path, keep=2)
    assert [p.name for p in ckpt.list_iter_checkpoints(tmp_path)] == [
        "iter_0000010.ckpt",
        "iter_0000015.ckpt",
    ]
    assert ckpt.load_checkpoint(tmp_path / "iter_0000010.ckpt").iteration == 10  # not relinked
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.ckpt"):
        ckpt.load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        ckpt.load_checkpoint(tmp_path / "missing.ckpt")


def test_rng_states_survive_a_weights_only_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    ckpt.atomic_torch_save(capture_rng().to_dict(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(RngState.from_dict(torch.load(tmp_path / "rng.pt", weights_only=True)))
    again = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_schedule_warmup_steps_and_state() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupMultiStepLR(
        optimizer, base_lr=0.1, milestones=(6, 8), gamma=0.1, warmup_iters=4, warmup_factor=0.01
    )
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        sched.step()
    expected = [0.001, 0.02575, 0.0505, 0.07525, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert lrs == pytest.approx(expected)
    other = WarmupMultiStepLR(optimizer, base_lr=0.1, milestones=(6, 8), warmup_iters=4)
    other.load_state_dict(sched.state_dict())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)


def test_optimizer_kinds_get_the_configured_groups_and_schedule() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    model[1].weight.requires_grad_(False)  # frozen parameters are left out
    base = TrainConfig(
        data=DataConfig("a.json", "imgs", batch_size=16),
        optim=OptimConfig(base_lr=0.02, weight_decay=0.05, no_decay_norm_bias=True),
        schedule=ScheduleConfig(warmup_iters=0),
    )
    sgd, _ = build_optimization(model, base)
    adamw, sched = build_optimization(
        model, base.with_values({"optim.kind": "adamw", "optim.momentum": 0.8})
    )
    assert type(sgd) is torch.optim.SGD and type(adamw) is torch.optim.AdamW
    assert adamw.defaults["betas"] == (0.8, 0.999) and sgd.defaults["momentum"] == 0.9
    for optimizer in (sgd, adamw):
        groups = [(len(g["params"]), g["weight_decay"]) for g in optimizer.param_groups]
        assert groups == [(1, 0.05), (2, 0.0)]  # linear weight; linear bias + BN bias
    sched.step()
    assert [g["lr"] for g in adamw.param_groups] == [0.02, 0.02]
    with pytest.raises(ValueError, match="optimizer"):
        base.with_values({"optimizer": "lamb"})  # the flat name of earlier versions
    with pytest.raises(ValueError, match="optim.kind"):
        base.with_values({"optim.kind": "lamb"})


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended (code {proc.returncode}) before {path.name}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.02)


def _train_rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "train"]


def test_sigkill_then_resume_gives_the_same_weights(tmp_path: Path) -> None:
    """A run killed with SIGKILL after step 10 and resumed ends bit-identical to a clean run."""
    files = write_shapes(tmp_path / "data")
    common = {
        "schedule.max_iter": 20,
        "checkpoint.period": 5,
        "data.flip_prob": 0.5,
        "runtime.seed": 3,
    }
    clean = tiny_config(files, tmp_path / "clean", common)
    killed = tiny_config(files, tmp_path / "killed", common)
    env = subprocess_env()
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("clean", "killed")}
    run = {"env": env, "stderr": subprocess.STDOUT}
    p_clean = subprocess.Popen(train_command(*cli_args(clean)), stdout=logs["clean"], **run)
    p_killed = subprocess.Popen(train_command(*cli_args(killed)), stdout=logs["killed"], **run)
    try:
        _wait_for(tmp_path / "killed" / "iter_0000010.ckpt", p_killed, timeout=120)
        p_killed.send_signal(signal.SIGKILL)
        assert p_killed.wait(30) == -signal.SIGKILL
    finally:
        p_killed.kill()
    at_kill = ckpt.load_checkpoint(tmp_path / "killed" / "last.ckpt").iteration
    print(f"killed after step {at_kill}")
    assert 10 <= at_kill < 20, "the run must be killed in the middle"

    # The resumed run reads its whole configuration from the checkpoint.
    resumed = subprocess.run(
        train_command("--out", str(tmp_path / "killed"), "--resume", "--no-progress"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert p_clean.wait(timeout=300) == 0, (tmp_path / "clean.log").read_text()[-3000:]
    for handle in logs.values():
        handle.close()

    a = ckpt.load_checkpoint(tmp_path / "clean" / "last.ckpt")
    b = ckpt.load_checkpoint(tmp_path / "killed" / "last.ckpt")
    assert a.iteration == b.iteration == 20
    assert a.model.keys() == b.model.keys()
    unequal = [k for k in a.model if not torch.equal(a.model[k], b.model[k])]
    assert not unequal, f"weights differ after resuming at step {at_kill}: {unequal[:5]}"
    for sa, sb in zip(a.optimizer["state"].values(), b.optimizer["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # metrics.jsonl: each step once (the killed run's extra lines are dropped), same losses
    rows_a, rows_b = _train_rows(tmp_path / "clean"), _train_rows(tmp_path / "killed")
    assert [r["iter"] for r in rows_b] == list(range(1, 21))
    assert [r["loss_total"] for r in rows_a] == [r["loss_total"] for r in rows_b]
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "killed").iterdir())
    assert os.path.getsize(tmp_path / "killed" / "model_final.safetensors") > 0


def test_a_format_1_checkpoint_with_the_flat_config_resumes(tmp_path: Path) -> None:
    """A checkpoint of the previous version (format 1, flat train_config) continues."""
    from maskrcnn.cli.train import main as cli_main

    files = write_shapes(tmp_path / "data")
    run = tmp_path / "run"
    changes = {"schedule.max_iter": 3, "checkpoint.period": 3}
    with one_thread():
        train(tiny_config(files, run, changes))
    data = torch.load(run / "last.ckpt", weights_only=True)
    assert data["format"] == ckpt.FORMAT == "maskrcnn-train/2"
    assert set(data["rng"]) == {"ranks"} and set(data["counters"]) == {
        "skipped_steps",
        "elapsed_seconds",
    }
    assert data["data"] == {"epoch": 0, "batch": 3, "batches_per_epoch": 4}
    # what the previous version wrote: the same keys, the flat configuration
    data["format"] = "maskrcnn-train/1"
    data["train_config"] = {
        "train_ann": str(files.train_ann),
        "train_images": str(files.image_dir),
        "out_dir": str(run),
        "preset": "r18_fpn",
        "model_overrides": assignments(TINY_MODEL),
        "batch_size": 2,
        "max_iter": 3,
        "base_lr": 0.01,
        "base_batch_size": 2,
        "warmup_iters": 3,
        "lr_steps": [0.8],
        "log_period": 1,
        "checkpoint_period": 3,
        "keep_checkpoints": -1,
        "num_workers": 0,
        "progress": False,
        "device": "cpu",
        "amp": "none",
    }
    torch.save(data, run / "last.ckpt")
    old = ckpt.load_checkpoint(run / "last.ckpt")
    assert old.iteration == 3 and old.data == DataPosition(0, 3, 4) and len(old.rng) == 1
    assert TrainConfig.from_dict(old.train_config) == tiny_config(files, run, changes)

    with one_thread():
        code = cli_main(["train", "--out", str(run), "--resume", "--max-iter", "5"])
    assert code == 0
    new = ckpt.load_checkpoint(run / "last.ckpt")
    assert new.iteration == 5
    assert TrainConfig.from_dict(new.train_config).schedule.max_iter == 5
    assert [r["iter"] for r in _train_rows(run)] == [1, 2, 3, 4, 5]

    data["format"] = "maskrcnn-train/9"
    torch.save(data, tmp_path / "future.ckpt")
    with pytest.raises(ValueError, match="not a maskrcnn training checkpoint"):
        ckpt.load_checkpoint(tmp_path / "future.ckpt")
