"""The time-budgeted schedule: the fit's decisions, and runs whose steps are slowed down."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from train_setup import one_thread, tiny_config, write_shapes

from maskrcnn.data.shapes import ShapesFiles
from maskrcnn.train import checkpoint as ckpt
from maskrcnn.train.budget import BudgetPolicy, evaluations_between, fit_plan, seconds_needed
from maskrcnn.train.hooks import Hook, LoopState
from maskrcnn.train.schedule import StepPlan, WarmupMultiStepLR
from maskrcnn.train.trainer import Trainer


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> ShapesFiles:
    return write_shapes(tmp_path_factory.mktemp("shapes"))


BASE = StepPlan.linear(max_iter=1000, milestones=(800, 950), warmup_iters=50)


def test_evaluations_are_counted_with_the_final_one_shared() -> None:
    assert evaluations_between(0, 100, 0) == 1
    assert evaluations_between(0, 100, 25) == 4  # 25, 50, 75 and the final one at 100
    assert evaluations_between(0, 101, 25) == 5
    assert evaluations_between(30, 100, 25) == 3
    assert seconds_needed(10, 20, step_seconds=2.0, eval_seconds=5.0, eval_period=0) == 25.0


def test_the_fit_takes_the_most_steps_that_end_evaluated_in_time() -> None:
    plan = fit_plan(
        BASE, BASE, step=20, seconds_left=500.0, step_seconds=1.0, eval_seconds=7.0, eval_period=100
    )
    # n more steps with n + 7 * (evaluations) <= 500: n = 465 (4 periodic + final = 35 s)
    assert plan.max_iter == 485 and plan.fitted and plan.revisions == ((20, 485),)
    assert seconds_needed(20, 485, step_seconds=1.0, eval_seconds=7.0, eval_period=100) == 500
    assert seconds_needed(20, 486, step_seconds=1.0, eval_seconds=7.0, eval_period=100) > 500
    assert plan.milestones == (round(800 * 0.485), round(950 * 0.485))
    assert plan.warmup_iters == round(50 * 0.485) and plan.same_before(BASE, 20)
    # never more than configured, and at least one more step when nothing fits
    fast = fit_plan(BASE, BASE, step=20, seconds_left=1e6, step_seconds=0.1, eval_seconds=0.0,
                    eval_period=0)  # fmt: skip
    assert fast.max_iter == 1000 and fast.milestones == (800, 950)
    late = fit_plan(BASE, BASE, step=20, seconds_left=-5.0, step_seconds=1.0, eval_seconds=1.0,
                    eval_period=0)  # fmt: skip
    assert late.max_iter == 21 and late.milestones == (20, 20)  # both decay at the next step


def test_a_revision_keeps_every_step_taken() -> None:
    first = fit_plan(
        BASE, BASE, step=20, seconds_left=600.0, step_seconds=1.0, eval_seconds=0.0, eval_period=0
    )
    assert first.max_iter == 620 and first.milestones == (496, 589)
    # the machine got slower after step 500: the first milestone is passed and stays
    slower = fit_plan(
        first, BASE, step=500, seconds_left=20.0, step_seconds=2.0, eval_seconds=0.0, eval_period=0
    )
    assert slower.max_iter == 510 and slower.milestones == (496, 500)
    assert slower.revisions == ((20, 620), (500, 510))
    assert slower.same_before(first, 500) and not slower.same_before(first, 501)
    # a change within min_change keeps the plan as it is
    same = fit_plan(
        first, BASE, step=100, seconds_left=521.0, step_seconds=1.0, eval_seconds=0.0,
        eval_period=0, min_change=0.01,
    )  # fmt: skip
    assert same is first


def test_a_shortened_warm_up_keeps_the_rates_already_used() -> None:
    plan = fit_plan(
        BASE, BASE, step=12, seconds_left=88.0, step_seconds=1.0, eval_seconds=0.0, eval_period=0
    )
    assert plan.max_iter == 100 and plan.warmup_iters == 13  # 5 scaled, but not before step 13
    assert [plan.factor(t) for t in range(12)] == [BASE.factor(t) for t in range(12)]
    assert plan.factor(13) == 1.0 and plan.factor(12) == BASE.factor(12)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupMultiStepLR(optimizer, base_lr=0.5, plan=BASE)
    for _ in range(12):
        sched.step()
    sched.set_plan(plan)
    with pytest.raises(ValueError, match="keep the 12 steps already taken"):
        sched.set_plan(StepPlan.linear(max_iter=100, milestones=(5,), warmup_iters=50))
    state = json.loads(json.dumps(sched.state_dict()))  # plain containers
    other = WarmupMultiStepLR(optimizer, base_lr=0.5, plan=BASE)
    other.load_state_dict(state)
    assert other.plan == plan and other.last_iter == 12
    unrelated = WarmupMultiStepLR(optimizer, base_lr=0.5, plan=StepPlan.linear(
        max_iter=10, milestones=(8,)))  # fmt: skip
    unrelated.load_state_dict(state)  # another configured schedule: its own plan stays
    assert unrelated.plan.max_iter == 10


class _Slow(Hook):
    """Makes every step take ``seconds`` longer (as on a slow machine)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def after_step(self, loop: LoopState) -> None:
        time.sleep(self.seconds)


class _StopAt(Hook):
    """Sends SIGINT (Ctrl-C) after the given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, loop: LoopState) -> None:
        if loop.iteration == self.step:
            signal.raise_signal(signal.SIGINT)


def _rows(run: Path, kind: str) -> list[dict]:
    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r for r in rows if r["type"] == kind]


def _budgeted(shapes: ShapesFiles, out: Path, minutes: float):
    changes = {
        "runtime.max_minutes": minutes,
        "schedule.max_iter": 10_000,  # far more than fits: the budget decides
        "schedule.warmup_iters": 100,
        "schedule.lr_steps": (0.6, 0.85),
        "eval.period": 15,
        "checkpoint.period": 10,
        "log.period": 1,
    }
    return tiny_config(shapes, out, changes, val=True)


def test_a_slowed_run_decays_and_evaluates_inside_its_budget(
    tmp_path: Path, shapes: ShapesFiles
) -> None:
    cfg = _budgeted(shapes, tmp_path / "run", minutes=0.4)
    trainer = Trainer(cfg)
    trainer.hooks.insert(0, _Slow(0.25))
    trainer.budget_hook.policy = BudgetPolicy(replan_every=8)
    with one_thread():
        result = trainer.run()
    assert result.stop_reason == "max_iter"  # not cut off by the budget
    assert result.seconds <= 60 * cfg.runtime.max_minutes  # the final evaluation included
    plan = result.plan
    assert plan.fitted and 13 <= plan.max_iter < 100 and result.iteration == plan.max_iter
    assert result.eval is not None and result.eval.num_images == 4
    rows = _rows(tmp_path / "run", "train")
    assert [r["iter"] for r in rows] == list(range(1, plan.max_iter + 1))
    lrs = [r["lr"] for r in rows]
    assert lrs == [pytest.approx(cfg.lr * plan.factor(r["iter"] - 1), rel=1e-12) for r in rows]
    assert lrs[-1] == pytest.approx(cfg.lr * 0.01)  # both milestones reached
    assert max(lrs) == pytest.approx(cfg.lr)  # the warm-up ended
    plans = _rows(tmp_path / "run", "plan")
    assert plans and plans[-1]["max_iter"] == plan.max_iter
    assert StepPlan.from_dict(plans[-1]) == plan


def test_a_resumed_budgeted_run_keeps_its_plan(tmp_path: Path, shapes: ShapesFiles) -> None:
    cfg = _budgeted(shapes, tmp_path / "run", minutes=0.4)
    first = Trainer(cfg)
    first.hooks[:0] = [_Slow(0.2), _StopAt(14)]  # the plan is made after step 12
    with one_thread():
        stopped = first.run()
    assert stopped.stop_reason == "interrupted" and stopped.iteration == 15
    plan = stopped.plan
    assert plan.fitted and plan.max_iter > 15
    saved = ckpt.load_checkpoint(tmp_path / "run" / ckpt.LAST)
    assert StepPlan.from_dict(saved.scheduler["plan"]) == plan

    second = Trainer(cfg, resume=True)
    assert second.loop.max_iter == plan.max_iter  # before any step: the checkpoint's plan
    second.hooks.insert(0, _Slow(0.2))
    with one_thread():
        result = second.run()
    assert result.stop_reason == "max_iter" and result.plan == plan  # no revision after resume
    assert result.iteration == plan.max_iter and result.eval is not None
    rows = _rows(tmp_path / "run", "train")
    assert [r["iter"] for r in rows] == list(range(1, plan.max_iter + 1))
    assert [r["lr"] for r in rows] == [
        pytest.approx(cfg.lr * plan.factor(r["iter"] - 1), rel=1e-12) for r in rows
    ]
