"""The training loop: learning, clean stops, non-finite losses, configuration and the CLI."""

from __future__ import annotations

import argparse
import json
import math
import signal
from pathlib import Path

import pytest
import torch
from train_setup import TINY_MODEL, assignments, cli_args, one_thread, tiny_config, write_shapes

from maskrcnn.cli.train import main as cli_main
from maskrcnn.data.shapes import ShapesFiles
from maskrcnn.modeling.mask_rcnn import MaskRCNN
from maskrcnn.train import checkpoint as ckpt
from maskrcnn.train.assignments import parse_assignment
from maskrcnn.train.config import DataConfig, TrainConfig
from maskrcnn.train.hooks import Hook, LoopState
from maskrcnn.train.model_spec import ModelSpec
from maskrcnn.train.trainer import NonFiniteLossError, Trainer, train
from maskrcnn.weights.native import load_model


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> ShapesFiles:
    return write_shapes(tmp_path_factory.mktemp("shapes"))


def _rows(run: Path, kind: str = "train") -> list[dict]:
    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["type"] == kind]


def test_loss_falls_on_a_tiny_set(tmp_path: Path) -> None:
    """60 steps on 4 images (fixed size, no flip): the loss must drop well below its start.

    Measured over seeds 0-3: last-5 / first-5 mean total loss 0.32-0.48; broken updates (no
    step, wrong sign, a zero learning rate) leave it near 1 or make it diverge.
    """
    files = write_shapes(tmp_path / "data", train=4, val=0)
    cfg = tiny_config(
        files,
        tmp_path / "run",
        {
            "schedule.max_iter": 60,
            "schedule.warmup_iters": 5,
            "schedule.lr_steps": (0.75,),
            "optim.clip_grad_norm": 10.0,
            "data.flip_prob": 0.0,
            "checkpoint.period": 1000,
            "model.overrides": {**TINY_MODEL, "input.min_size": (96,)},
        },
    )
    with one_thread():
        result = train(cfg)
    assert result.stop_reason == "max_iter" and result.skipped_steps == 0
    run = Path(cfg.out_dir)
    total = [r["loss_total"] for r in _rows(run)]
    assert len(total) == 60
    first, last = sum(total[:5]) / 5, sum(total[-5:]) / 5
    assert last < 0.7 * first, f"loss {first:.3f} -> {last:.3f}"
    assert (run / "curves.png").stat().st_size > 0
    assert [r["lr"] for r in _rows(run)][44:46] == pytest.approx([0.01, 0.001])


def test_time_budget_stops_saves_and_evaluates(tmp_path: Path, shapes: ShapesFiles) -> None:
    changes = {"runtime.max_minutes": 1e-6, "schedule.max_iter": 100}
    cfg = tiny_config(shapes, tmp_path / "run", changes, val=True)
    with one_thread():
        result = train(cfg)
    assert result.stop_reason == "time_budget" and result.iteration == 1
    assert ckpt.load_checkpoint(tmp_path / "run" / "last.ckpt").iteration == 1
    assert result.eval is not None and result.eval.num_images == 4
    evals = _rows(tmp_path / "run", "eval")
    assert len(evals) == 1 and {"bbox_AP", "segm_AP"} <= set(evals[0])
    model = load_model(result.final_model)  # the deployable file, category names inside
    assert model.cfg.category_names == ("__background__", "circle", "square", "triangle", "star")
    assert (tmp_path / "run" / "curves.png").is_file()
    assert (tmp_path / "run" / "eval" / "iter_0000001" / "metrics.json").is_file()


def _nan_on(calls: set[int] | int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Makes ``MaskRCNN.losses`` return NaN on the given calls (1-based; an int: from then on)."""
    real = MaskRCNN.losses
    seen = [0]

    def losses(self, images, targets):
        seen[0] += 1
        bad = seen[0] >= calls if isinstance(calls, int) else seen[0] in calls
        out = real(self, images, targets)
        return {k: v * math.nan for k, v in out.items()} if bad else out

    monkeypatch.setattr(MaskRCNN, "losses", losses)
    return seen


def test_nonfinite_steps_are_skipped_with_a_warning(
    tmp_path: Path, shapes: ShapesFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    _nan_on({3, 4}, monkeypatch)
    cfg = tiny_config(shapes, tmp_path / "run", {"schedule.max_iter": 6})
    with one_thread(), pytest.warns(RuntimeWarning, match="non-finite loss") as caught:
        result = train(cfg)
    assert len([w for w in caught if "non-finite" in str(w.message)]) == 2
    assert result.stop_reason == "max_iter" and result.skipped_steps == 2
    rows = _rows(tmp_path / "run")
    assert ["loss_total" in r for r in rows] == [True, True, False, False, True, True]
    state = ckpt.load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert state.counters.skipped_steps == 2
    assert all(torch.isfinite(v).all() for v in state.model.values() if v.is_floating_point())


def test_ten_nonfinite_in_a_row_stop_and_keep_the_last_good_checkpoint(
    tmp_path: Path, shapes: ShapesFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    _nan_on(7, monkeypatch)  # steps 7, 8, ... all fail
    changes = {"schedule.max_iter": 40, "checkpoint.period": 5}
    cfg = tiny_config(shapes, tmp_path / "run", changes)
    with one_thread(), pytest.warns(RuntimeWarning), pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    message = str(err.value)
    assert "10 non-finite losses in a row (steps 7-16)" in message
    assert "last.ckpt (step 5)" in message and "--resume" in message
    assert ckpt.load_checkpoint(tmp_path / "run" / "last.ckpt").iteration == 5
    assert [p.name for p in ckpt.list_iter_checkpoints(tmp_path / "run")] == ["iter_0000005.ckpt"]


def test_a_finished_run_is_not_overwritten(tmp_path: Path, shapes: ShapesFiles) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.ckpt").write_bytes(b"a previous run")
    with pytest.raises(ValueError, match="--resume"):
        Trainer(tiny_config(shapes, run))


def test_train_config_checks_and_round_trips() -> None:
    data = DataConfig("a.json", "imgs", batch_size=4)
    cfg = TrainConfig(data=data, model=ModelSpec(overrides={"rpn.nms_thresh": 0.6}))
    assert cfg.lr == pytest.approx(0.005) and cfg.schedule.milestones() == (60300, 80100)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.with_assignments(["lr_steps=[0.5]", "amp=bf16"]).schedule.lr_steps == (0.5,)
    assert parse_assignment("input.min_size=[512, 640]") == ("input.min_size", (512, 640))
    assert parse_assignment("device=cuda:1") == ("device", "cuda:1")
    model_cfg = cfg.model.model_config(3, ("__background__", "a", "b"))
    assert model_cfg.rpn.nms_thresh == 0.6 and model_cfg.num_classes == 3
    flat = {"train_ann": "a.json", "train_images": "imgs"}  # the layout of earlier versions
    for bad, match in [
        ({"batch_size": 0}, "batch_size"),
        ({"lr_steps": (0.9, 0.5)}, "lr_steps"),
        ({"amp": "fp8"}, "amp"),
        ({"val_ann": "v.json"}, "val_images"),
        ({"model_overrides": ["nonsense"]}, "key=value"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig.from_dict({**flat, **bad})
    for item, match in [
        ("input.min_size=512", "expected a list"),
        ("rpn.no_such_field=1", "unknown config key"),
        ("num_classes=5", "set from the dataset"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig.from_dict({**flat, "model_overrides": [item]}).model.model_config()
    with pytest.raises(ValueError, match="unknown field 'lr'"):
        cfg.with_assignments(["lr=0.1"])
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['extra'\]"):
        TrainConfig.from_dict({**cfg.to_dict(), "extra": 1})


def test_cli_reports_bad_input_before_training(tmp_path: Path, shapes: ShapesFiles, capsys) -> None:
    out = str(tmp_path / "run")
    assert cli_main(["train", "--data", str(tmp_path / "nowhere"), "--out", out]) == 2
    assert "folder not found" in capsys.readouterr().err
    # a validation set with a category the training set does not have
    val = json.loads(shapes.val_ann.read_text())
    val["categories"].append({"id": 99, "name": "hexagon"})
    val["annotations"][0]["category_id"] = 99
    bad_val = tmp_path / "val.json"
    bad_val.write_text(json.dumps(val))
    args = ["--train-ann", str(shapes.train_ann), "--train-images", str(shapes.image_dir)]
    args += ["--val-ann", str(bad_val), "--val-images", str(shapes.image_dir), "--out", out]
    assert cli_main(["train", *args, "--preset", "r18_fpn"]) == 2
    err = capsys.readouterr().err
    assert "val.json" in err and "99" in err
    assert cli_main(["train", *args[:4], "--out", out, "--set", "input.min_size=64"]) == 2
    assert "expected a list" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_bf16_autocast_and_absolute_lr_from_the_cli(tmp_path: Path, shapes: ShapesFiles) -> None:
    from maskrcnn.cli.train import add_train_command, build_config

    parser = argparse.ArgumentParser()
    add_train_command(parser.add_subparsers())
    args = parser.parse_args(
        ["train", "--data", str(shapes.train_ann.parent), "--out", str(tmp_path / "run")]
        + ["--preset", "r18_fpn", "--batch-size", "2", "--lr", "0.004", "--amp", "bf16"]
        + ["--max-iter", "3", "--workers", "0", "--device", "cpu", "--no-progress"]
        + [f"--set={item}" for item in assignments(TINY_MODEL)]
        + ["--train-set", "warmup_iters=0", "--train-set", "lr_steps=[1.0]"]
    )
    cfg, resuming = build_config(args)
    cfg = cfg.with_values({"log.period": 1})
    assert not resuming and cfg.lr == pytest.approx(0.004) and cfg.runtime.precision == "bf16"
    assert cfg.data.val_ann == str(shapes.val_ann) and cfg.model.overrides == TINY_MODEL
    with one_thread():
        result = Trainer(cfg.with_values({"data.val_ann": None, "data.val_images": None})).run()
    rows = _rows(tmp_path / "run")
    assert result.skipped_steps == 0 and [r["lr"] for r in rows] == [pytest.approx(0.004)] * 3
    assert all(math.isfinite(r["loss_total"]) for r in rows)


def test_ctrl_c_saves_and_resume_finishes(
    tmp_path: Path, shapes: ShapesFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, handler = MaskRCNN.losses, signal.getsignal(signal.SIGINT)
    calls = [0]

    def losses(self, images, targets):
        calls[0] += 1
        if calls[0] == 3:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C in step 3
        return real(self, images, targets)

    monkeypatch.setattr(MaskRCNN, "losses", losses)
    changes = {"schedule.max_iter": 5, "checkpoint.period": 100}
    cfg = tiny_config(shapes, tmp_path / "run", changes)
    with one_thread():
        first = train(cfg)
        assert first.stop_reason == "interrupted" and first.iteration == 3
        assert first.final_model is None
        assert ckpt.load_checkpoint(tmp_path / "run" / "last.ckpt").iteration == 3
        second = train(cfg, resume=True)
    assert second.stop_reason == "max_iter" and second.iteration == 5
    assert [r["iter"] for r in _rows(tmp_path / "run")] == [1, 2, 3, 4, 5]
    assert signal.getsignal(signal.SIGINT) is handler  # restored after each run


class _Recorder(Hook):
    """Records the calls the loop makes, with the step count and the stop reason."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str | None]] = []

    def before_train(self, loop: LoopState) -> None:
        self.calls.append(("before_train", loop.iteration, loop.stop_reason))

    def before_step(self, loop: LoopState) -> None:
        self.calls.append(("before_step", loop.iteration, loop.stop_reason))

    def after_step(self, loop: LoopState) -> None:
        assert loop.outcome is not None and loop.lr > 0
        self.calls.append(("after_step", loop.iteration, loop.stop_reason))

    def after_train(self, loop: LoopState) -> None:
        self.calls.append(("after_train", loop.iteration, loop.stop_reason))


def test_hooks_are_called_in_the_documented_order(
    tmp_path: Path, shapes: ShapesFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes = {"schedule.max_iter": 2, "checkpoint.period": 100}
    trainer = Trainer(tiny_config(shapes, tmp_path / "run", changes))
    recorder = _Recorder()
    trainer.hooks.append(recorder)
    with one_thread():
        result = trainer.run()
    assert recorder.calls == [
        ("before_train", 0, None),
        ("before_step", 0, None),
        ("after_step", 1, None),
        ("before_step", 1, None),
        ("after_step", 2, None),
        ("after_train", 2, "max_iter"),
    ]
    assert result.stop_reason == "max_iter" and trainer.iteration == 2
    # the default hooks, in their documented order
    assert [type(h).__name__ for h in trainer.hooks[:-1]] == [
        "ProgressHook",
        "NonFiniteHook",
        "MetricsHook",
        "CheckpointHook",
        "FinalModelHook",
        "EvalHook",
        "BudgetHook",
        "CurvesHook",
        "ThreadsHook",  # on the CPU
    ]

    _nan_on(1, monkeypatch)  # every step fails: after_train still runs, told why
    changes = {"schedule.max_iter": 9, "runtime.max_nonfinite": 2}
    trainer = Trainer(tiny_config(shapes, tmp_path / "nan", changes))
    recorder = _Recorder()
    trainer.hooks.append(recorder)
    with one_thread(), pytest.warns(RuntimeWarning), pytest.raises(NonFiniteLossError):
        trainer.run()
    assert recorder.calls[-1] == ("after_train", 2, "nonfinite")
    assert not (tmp_path / "nan" / "last.ckpt").exists()
    assert not (tmp_path / "nan" / "model_final.safetensors").exists()


def test_updates_that_blow_up_are_rolled_back_and_stop_the_run(
    tmp_path: Path, shapes: ShapesFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = torch.optim.SGD.step
    calls = [0]

    def step(self, closure=None):
        calls[0] += 1
        out = real(self, closure)
        if calls[0] >= 4:  # the 4th update and every later one makes the weights NaN
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(math.nan)
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    changes = {"schedule.max_iter": 30, "checkpoint.period": 2, "runtime.max_nonfinite": 3}
    cfg = tiny_config(shapes, tmp_path / "run", changes)
    with one_thread(), pytest.warns(RuntimeWarning, match="updated weights"):
        with pytest.raises(NonFiniteLossError) as err:
            train(cfg)
    assert "3 non-finite losses in a row (steps 4-6)" in str(err.value)
    state = ckpt.load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert state.iteration == 2 and state.counters.skipped_steps == 0
    assert all(torch.isfinite(v).all() for v in state.model.values() if v.is_floating_point())
    assert not (tmp_path / "run" / "model_final.safetensors").exists()


def test_non_finite_learning_rate_is_refused_up_front(tmp_path: Path, shapes: ShapesFiles) -> None:
    for item in ["optim.base_lr=NaN", "optim.base_lr=Infinity", "optim.momentum=1.5"]:
        with pytest.raises(ValueError, match="TrainConfig.optim"):
            tiny_config(shapes, tmp_path / "run").with_assignments([item])


def _val_copy(shapes: ShapesFiles, root: Path, edit) -> ShapesFiles:
    """``shapes`` with its validation file rewritten by ``edit(data)`` (images copied)."""
    import dataclasses
    import shutil

    images = root / "images"
    shutil.copytree(shapes.image_dir, images)
    data = json.loads(shapes.val_ann.read_text())
    edit(data, images)
    val_ann = root / "val.json"
    val_ann.write_text(json.dumps(data))
    return dataclasses.replace(shapes, image_dir=images, val_ann=val_ann)


def test_string_validation_ids_are_refused_before_training(
    tmp_path: Path, shapes: ShapesFiles
) -> None:
    def stringify(data, _):
        for img in data["images"]:
            img["id"] = f"v{img['id']}"
        for ann in data["annotations"]:
            ann["image_id"] = f"v{ann['image_id']}"

    files = _val_copy(shapes, tmp_path / "data", stringify)
    cfg = tiny_config(files, tmp_path / "run", {"schedule.max_iter": 2}, val=True)
    with pytest.raises(ValueError, match=r"val.json: 4 image id\(s\) are not integers \('v"):
        Trainer(cfg)
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_a_truncated_validation_image_is_named_before_training(
    tmp_path: Path, shapes: ShapesFiles
) -> None:
    names: list[str] = []

    def truncate(data, images):
        path = images / data["images"][1]["file_name"]
        path.write_bytes(path.read_bytes()[:200])
        names.append(path.name)

    files = _val_copy(shapes, tmp_path / "data", truncate)
    cfg = tiny_config(files, tmp_path / "run", {"schedule.max_iter": 2}, val=True)
    with pytest.raises(ValueError, match=f"1 image\\(s\\) cannot be evaluated: .*{names[0]}"):
        Trainer(cfg)
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_a_failing_final_evaluation_keeps_model_final_and_says_how_to_retry(
    tmp_path: Path, shapes: ShapesFiles, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import maskrcnn.train.evaluate as run_eval

    def broken(*args, **kwargs):
        raise ValueError("evaluation exploded")

    monkeypatch.setattr(run_eval, "evaluate_coco", broken)
    cfg = tiny_config(shapes, tmp_path / "run", {"schedule.max_iter": 2}, val=True)
    with one_thread():
        code = cli_main(["train", *cli_args(cfg)])
    err = capsys.readouterr().err
    final = tmp_path / "run" / "model_final.safetensors"
    assert code == 1 and final.is_file()
    assert all(torch.isfinite(v).all() for v in load_model(final).state_dict().values())
    assert "evaluation exploded" in err
    assert f"maskrcnn eval --weights {final} --ann {shapes.val_ann}" in err


def test_resume_without_checkpoint_or_data_names_the_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "empty"
    assert cli_main(["train", "--out", str(out), "--resume"]) == 2
    assert f"no checkpoint in {out}" in capsys.readouterr().err


def test_an_out_of_range_model_override_is_refused(
    tmp_path: Path, shapes: ShapesFiles, capsys
) -> None:
    cfg = tiny_config(shapes, tmp_path / "run")
    args = [*cli_args(cfg), "--set", "rpn.nms_thresh=-1"]
    assert cli_main(["train", *args]) == 2
    assert "rpn.nms_thresh: must be a number in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
