"""Fine-tuning runs: --init applied once at the start, reported, and resumable after SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import torch
from train_setup import cli_args, subprocess_env, tiny_config, train_command, write_shapes

from maskrcnn import build_model, save_model
from maskrcnn.data.shapes import write_shapes_dataset
from maskrcnn.train import checkpoint as ckpt
from maskrcnn.train.model_spec import ModelSpec


def _source(tmp_path: Path, spec: ModelSpec) -> Path:
    names = ("__background__", "circle", "square", "triangle", "star")
    torch.manual_seed(1)
    model = build_model(spec.model_config(5, names))
    return save_model(model, tmp_path / "source.safetensors")


def test_sigkill_then_resume_of_a_finetuning_run_gives_the_same_weights(tmp_path: Path) -> None:
    files = write_shapes_dataset(
        tmp_path / "data2",
        train=8,
        val=2,
        seed=1,
        image_size=(96, 128),
        classes=("circle", "hexagon", "cross"),
        colours="pastel",
    )
    base = tiny_config(write_shapes(tmp_path / "unused", train=1, val=0), tmp_path / "x")
    source = _source(tmp_path, base.model)
    common = {"schedule.max_iter": 14, "checkpoint.period": 7, "runtime.seed": 3}
    runs = {}
    for name in ("clean", "killed"):
        cfg = tiny_config(files, tmp_path / name, common)
        runs[name] = cli_args(cfg) + ["--init", str(source), "--freeze-at", "1"]
    env = subprocess_env()
    p_clean = subprocess.Popen(train_command(*runs["clean"]), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)  # fmt: skip
    p_killed = subprocess.Popen(train_command(*runs["killed"]), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        target = tmp_path / "killed" / "iter_0000007.ckpt"
        deadline = time.monotonic() + 180
        while not target.exists():
            assert p_killed.poll() is None, "training ended before the checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        p_killed.send_signal(signal.SIGKILL)
        assert p_killed.wait(30) == -signal.SIGKILL
    finally:
        p_killed.kill()
    report = (tmp_path / "killed" / "init_report.txt").read_text()
    assert "circle <- circle" in report and "hexagon" in report and "cross" in report
    source.unlink()  # a resumed run never reads the source again
    resumed = subprocess.run(
        train_command("--out", str(tmp_path / "killed"), "--resume", "--no-progress"),
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert p_clean.wait(timeout=300) == 0
    a = ckpt.load_checkpoint(tmp_path / "clean" / "last.ckpt")
    b = ckpt.load_checkpoint(tmp_path / "killed" / "last.ckpt")
    assert a.iteration == b.iteration == 14
    unequal = [k for k in a.model if not torch.equal(a.model[k], b.model[k])]
    assert not unequal, unequal[:5]
    assert a.model_config["backbone"]["freeze_at"] == 1
