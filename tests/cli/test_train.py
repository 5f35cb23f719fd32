"""``maskrcnn train`` options -> TrainConfig: precision flags, --set, dotted and flat names."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from maskrcnn.cli.train import add_train_command, build_config
from maskrcnn.train.config import TrainConfig


def _config(tmp_path: Path, *options: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_train_command(parser.add_subparsers())
    args = ["train", "--train-ann", "a.json", "--train-images", "imgs"]
    args += ["--out", str(tmp_path / "run"), *options]
    cfg, resuming = build_config(parser.parse_args(args))
    assert not resuming
    return cfg


def test_precision_and_its_older_amp_spelling(tmp_path: Path) -> None:
    assert _config(tmp_path).runtime.precision == "fp32"
    for flag, value, expected in [
        ("--precision", "bf16", "bf16"),
        ("--precision", "auto", "auto"),
        ("--amp", "none", "fp32"),
        ("--amp", "fp16", "fp16"),
        ("--amp", "auto", "auto"),
    ]:
        assert _config(tmp_path, flag, value).runtime.precision == expected
    with pytest.raises(ValueError, match="--amp and --precision exclude each other"):
        _config(tmp_path, "--amp", "bf16", "--precision", "bf16")
    with pytest.raises(SystemExit):  # argparse: not a choice
        _config(tmp_path, "--precision", "none")


def test_flags_set_and_train_set_reach_their_sections(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        *("--preset", "r18_fpn", "--batch-size", "4", "--max-iter", "30", "--workers", "0"),
        *("--eval-period", "10", "--checkpoint-period", "5", "--seed", "2", "--device", "cpu"),
        *("--max-minutes", "3", "--set", "input.min_size=[96]", "--set", "rpn.nms_thresh=0.6"),
        *("--train-set", "optim.weight_decay=0.01", "--train-set", "keep_checkpoints=0"),
        "--no-progress",
    )
    assert cfg.model.preset == "r18_fpn" and cfg.data.batch_size == 4
    assert cfg.model.overrides == {"input.min_size": (96,), "rpn.nms_thresh": 0.6}
    assert (cfg.schedule.max_iter, cfg.eval.period, cfg.checkpoint.period) == (30, 10, 5)
    assert (cfg.runtime.seed, cfg.runtime.device, cfg.runtime.max_minutes) == (2, "cpu", 3.0)
    assert cfg.data.num_workers == 0 and cfg.log.progress is False
    assert cfg.optim.weight_decay == 0.01 and cfg.checkpoint.keep == 0
    assert cfg.out_dir == str(tmp_path / "run")
    absolute = _config(tmp_path, "--batch-size", "4", "--lr", "0.004")
    assert absolute.lr == pytest.approx(0.004) and absolute.optim.base_batch_size == 4
    with pytest.raises(ValueError, match="train setting 'optim.lr=1': unknown field"):
        _config(tmp_path, "--train-set", "optim.lr=1")
    with pytest.raises(ValueError, match="model override 'rpn.nms_thresh'"):
        _config(tmp_path, "--set", "rpn.nms_thresh=high")


def test_skip_bad_images_is_a_flag(tmp_path: Path) -> None:
    assert _config(tmp_path).data.skip_bad_images is False
    assert _config(tmp_path, "--skip-bad-images").data.skip_bad_images is True
    old_spelling = _config(tmp_path, "--train-set", "skip_bad_images=true")
    assert old_spelling.data.skip_bad_images is True


def test_truncated_image_is_a_clear_error_or_skipped(tmp_path: Path, capsys) -> None:
    from maskrcnn.cli.train import main
    from tests.train_setup import cli_args, one_thread, tiny_config, write_shapes

    files = write_shapes(tmp_path / "data", train=4, val=0)
    victim = sorted(files.image_dir.glob("train_*.png"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    cfg = tiny_config(files, tmp_path / "run", {"schedule.max_iter": 2, "data.batch_size": 4})
    with one_thread():
        assert main(["train", *cli_args(cfg)]) == 2
        err = capsys.readouterr().err
        assert victim.name in err and "truncated" in err and "--skip-bad-images" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        skipping = cfg.with_values({"out_dir": str(tmp_path / "skipping")})
        assert main(["train", *cli_args(skipping), "--skip-bad-images"]) == 0
    assert "2 steps" in capsys.readouterr().out


def test_an_error_from_a_loader_worker_is_reported_without_its_traceback() -> None:
    from maskrcnn.cli.train import _without_worker_traceback
    from maskrcnn.data.coco import BadImageError

    plain = BadImageError("a.json: image 3: cannot read image x.png: image file is truncated")
    assert _without_worker_traceback(plain) == str(plain)
    relayed = BadImageError(  # as torch's DataLoader re-raises what a worker raised
        "Caught BadImageError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "coco.py", line 1, in _load\nmaskrcnn.data.coco.BadImageError: '
        "a.json: image 3: cannot read image x.png: image file is truncated\n"
    )
    assert _without_worker_traceback(relayed) == str(plain)
