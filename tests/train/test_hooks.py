"""Each training hook on its own, driven by a hand-made loop state (no model, no data)."""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from maskrcnn.config import preset
from maskrcnn.train import checkpoint as ckpt
from maskrcnn.train.hooks import (
    CheckpointHook,
    CurvesHook,
    EvalHook,
    FinalModelHook,
    Hook,
    LoopState,
    MetricsHook,
    NonFiniteHook,
    NonFiniteLossError,
    ProgressHook,
    StopReason,
)
from maskrcnn.train.hooks.progress import postfix
from maskrcnn.train.meter import LossMeter
from maskrcnn.train.metrics import MetricsWriter
from maskrcnn.train.resumable_data import DataPosition
from maskrcnn.train.step import StepOutcome

NAMES = ["loss_total", "loss_a"]
SKIP = None  # a skipped (non-finite) step in the lists below


def _outcome(total: float | None) -> StepOutcome:
    """A step with ``loss_total = total`` and ``loss_a = total / 2``; None: a skipped step."""
    if total is None:
        return StepOutcome(NAMES, [math.nan, math.nan], True, False, False)
    return StepOutcome(NAMES, [total, total / 2], False, False, False)


def _drive(
    hooks: Sequence[Hook],
    totals: Sequence[float | None],
    *,
    max_iter: int,
    stop_reason: StopReason = "max_iter",
    start: int = 0,
) -> LoopState:
    """Runs the hooks as the trainer's loop does, over steps with the given losses."""
    loop = LoopState(iteration=start, max_iter=max_iter, start_iteration=start)
    for hook in hooks:
        hook.before_train(loop)
    try:
        for total in totals:
            for hook in hooks:
                hook.before_step(loop)
            loop.record(_outcome(total), lr=0.1 * (loop.iteration + 1), epoch=loop.iteration // 2)
            for hook in hooks:
                hook.after_step(loop)
        loop.stop_reason = stop_reason
    except NonFiniteLossError:
        loop.stop_reason = "nonfinite"
        raise
    finally:
        for hook in hooks:
            hook.after_train(loop)
    return loop


def test_hook_methods_are_no_ops_and_the_state_counts_steps() -> None:
    loop = _drive([Hook()], [1.0, SKIP, 2.0], max_iter=3)
    assert (loop.iteration, loop.skipped_steps, loop.stop_reason) == (3, 1, "max_iter")
    assert loop.lr == pytest.approx(0.3) and loop.epoch == 1 and loop.outcome is not None
    assert loop.finished and loop.stopped_cleanly
    interrupted = LoopState(iteration=0, max_iter=1, stop_reason="interrupted")
    assert interrupted.stopped_cleanly and not interrupted.finished
    assert not LoopState(iteration=0, max_iter=1, stop_reason="nonfinite").stopped_cleanly
    later = LoopState(iteration=0, max_iter=1, elapsed_before=100.0)
    assert 100.0 <= later.elapsed_seconds() < 110.0


def test_nonfinite_streak_warns_then_stops_naming_the_last_checkpoint(tmp_path: Path) -> None:
    hook = NonFiniteHook(max_in_a_row=3, run_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="non-finite loss") as caught:
        _drive([hook], [1.0, SKIP, SKIP, 2.0, SKIP, SKIP], max_iter=10)  # streaks of 2 only
    assert len(caught) == 4 and "step 6: " in str(caught[-1].message)
    assert "(2 in a row, 4 in all; stop at 3 in a row)" in str(caught[-1].message)

    hook = NonFiniteHook(max_in_a_row=3, run_dir=tmp_path)
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteLossError) as err:
        _drive([hook], [1.0, SKIP, 2.0, SKIP, SKIP, SKIP, 3.0], max_iter=10)
    assert "3 non-finite losses in a row (steps 4-6)" in str(err.value)
    assert "no checkpoint had been written yet" in str(err.value)

    ckpt.save_checkpoint(_checkpoint(iteration=2), tmp_path)
    hook = NonFiniteHook(max_in_a_row=2, run_dir=tmp_path, warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warn=False (ranks > 0): no warning at all
        with pytest.raises(NonFiniteLossError, match=r"last\.ckpt \(step 2\)"):
            _drive([hook], [1.0, 2.0, SKIP, SKIP], max_iter=10)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_rows_every_period_at_max_iter_and_at_a_clean_stop(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path, enabled=True, tensorboard=False)
    _drive([MetricsHook(writer, period=2)], [1.0, SKIP, 3.0, 5.0, 7.0], max_iter=5)
    rows = _rows(writer.path)
    assert [r["iter"] for r in rows] == [2, 4, 5]
    assert [r["loss_total"] for r in rows] == [1.0, 4.0, 7.0]  # the window's finite steps
    assert [r["loss_a"] for r in rows] == [0.5, 2.0, 3.5]
    assert [r["lr"] for r in rows] == pytest.approx([0.2, 0.4, 0.5])  # the row's step
    assert [(r["epoch"], r["skipped_total"]) for r in rows] == [(0, 1), (1, 1), (2, 1)]
    assert list(rows[0]) == [
        "type",
        "iter",
        "lr",
        "loss_total",
        "loss_a",
        "time",
        "epoch",
        "skipped_total",
    ]

    writer.path.unlink()
    _drive(
        [MetricsHook(writer, period=2)], [SKIP, SKIP, 2.0], max_iter=9, stop_reason="interrupted"
    )
    rows = _rows(writer.path)
    assert [r["iter"] for r in rows] == [2, 3]  # the steps left are written at the end
    assert "loss_total" not in rows[0] and rows[1]["loss_total"] == 2.0

    writer.path.unlink()
    _drive([MetricsHook(writer, period=2)], [1.0], max_iter=9, stop_reason="error")
    assert not writer.path.exists()  # an error (e.g. a second Ctrl-C) writes nothing more
    off = MetricsWriter(tmp_path / "rank1", enabled=False)
    _drive([MetricsHook(off, period=1)], [1.0, 2.0], max_iter=2)
    assert not off.path.exists()


def test_progress_bar_counts_steps_and_shows_window_means() -> None:
    out = io.StringIO()
    hook = ProgressHook(period=2, enabled=True, file=out)
    _drive([hook], [1.0, 3.0, SKIP], max_iter=9, start=2, stop_reason="interrupted")
    assert hook.bar.n == 5 and hook.bar.total == 9  # from the resumed step 2, plus 3 steps
    assert "total=2.000 a=1.000" in hook.bar.postfix  # the window of steps 3-4
    assert "train" in out.getvalue()
    window = LossMeter()
    assert postfix(window) == "skipped"
    quiet = ProgressHook(period=1, enabled=False, file=io.StringIO())
    _drive([quiet], [1.0], max_iter=1)
    assert quiet.file.getvalue() == ""


def test_checkpoints_every_period_not_after_a_skipped_step_and_at_a_clean_end(
    tmp_path: Path,
) -> None:
    def run(totals, reason: StopReason = "max_iter", **kw) -> list[int]:
        saved: list[int] = []
        hook = CheckpointHook(
            lambda loop: saved.append(loop.iteration),
            period=2,
            last_checkpoint=tmp_path / "last.ckpt",
        )
        _drive([hook], totals, stop_reason=reason, **kw)
        return saved

    assert run([1.0, 1.0, 1.0, SKIP, 1.0], max_iter=5) == [2, 5]  # step 4 was not finite
    assert run([1.0, 1.0, 1.0, 1.0], max_iter=4) == [2, 4]  # the end is already saved
    assert run([1.0, 1.0, 1.0], max_iter=9, reason="interrupted") == [2, 3]
    assert run([1.0, 1.0, 1.0], max_iter=9, reason="error") == [2]
    assert run([], max_iter=4, start=4) == [4]  # no checkpoint in the folder yet
    (tmp_path / "last.ckpt").write_bytes(b"")
    assert run([], max_iter=4, start=4) == []  # the resumed step is the saved one


def test_evaluation_periodic_and_final_reusing_a_fresh_one() -> None:
    def run(totals, period: int, reason: StopReason = "max_iter") -> tuple[list[int], object]:
        calls: list[int] = []

        def evaluate(iteration: int) -> object:
            calls.append(iteration)
            return f"result {iteration}"

        hook = EvalHook(evaluate, period=period)  # type: ignore[arg-type]
        _drive([hook], totals, max_iter=9, stop_reason=reason)
        return calls, hook.final

    assert run([1.0] * 4, period=2) == ([2, 4], "result 4")  # step 4's result is reused
    assert run([1.0] * 5, period=2) == ([2, 4, 5], "result 5")
    assert run([1.0] * 3, period=0, reason="time_budget") == ([3], "result 3")
    assert run([1.0] * 3, period=2, reason="interrupted") == ([2], None)
    assert run([1.0] * 3, period=2, reason="error") == ([2], None)


def _model() -> nn.Module:
    model = nn.Linear(2, 3)
    model.cfg = preset("r18_fpn", 3)  # what export_model stores beside the weights
    return model


def test_final_model_only_for_a_finished_run_on_rank_0(tmp_path: Path) -> None:
    from safetensors import safe_open

    for reason in ("max_iter", "time_budget"):
        path = tmp_path / f"{reason}.safetensors"
        hook = FinalModelHook(_model(), path, enabled=True)
        _drive([hook], [1.0], max_iter=9, stop_reason=reason)  # type: ignore[arg-type]
        assert hook.written == path
        with safe_open(str(path), "pt") as handle:
            assert set(handle.keys()) == {"weight", "bias"}
            assert json.loads(handle.metadata()["config"])["num_classes"] == 3
    for reason, enabled in [("interrupted", True), ("error", True), ("max_iter", False)]:
        path = tmp_path / "not.safetensors"
        hook = FinalModelHook(_model(), path, enabled=enabled)
        _drive([hook], [1.0], max_iter=9, stop_reason=reason)  # type: ignore[arg-type]
        assert hook.written is None and not path.exists()


def test_curves_are_plotted_when_the_run_finished(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"type": "train", "iter": i, "loss_total": 1.0 / i} for i in (1, 2, 3)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = tmp_path / "curves.png"
    _drive([CurvesHook(metrics, png, enabled=True)], [1.0], max_iter=9, stop_reason="interrupted")
    assert not png.exists()
    _drive([CurvesHook(metrics, png, enabled=False)], [1.0], max_iter=1)
    assert not png.exists()
    _drive([CurvesHook(metrics, png, enabled=True)], [1.0], max_iter=1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = tmp_path / "none.png"
    _drive([CurvesHook(tmp_path / "no.jsonl", missing, enabled=True)], [1.0], max_iter=1)
    assert not missing.exists()


def _checkpoint(iteration: int) -> ckpt.TrainingState:
    return ckpt.TrainingState(
        iteration=iteration,
        model={"w": torch.zeros(1)},
        optimizer={},
        scheduler={},
        scaler=None,
        rng=(),
        data=DataPosition(),
        model_config={},
        categories={},
        train_config={},
    )
