"""StepRunner: an update that makes the weights non-finite is rolled back and counted skipped."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from maskrcnn.train.distributed import DistInfo
from maskrcnn.train.step import StepRunner


class _Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))

    def forward(self, images, targets):  # noqa: ARG002
        return {"loss_sq": (self.weight**2).sum()}


def _runner(lr: float, *, momentum: float = 0.9) -> tuple[_Quadratic, torch.optim.SGD, StepRunner]:
    model = _Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    info = DistInfo(rank=0, world_size=1, local_rank=0)
    return model, opt, StepRunner(model, opt, device=torch.device("cpu"), info=info)


def _step(runner: StepRunner):
    return runner(([], [], []), stop_requested=lambda: False, deadline=None)


@pytest.mark.parametrize("lr", [math.nan, math.inf, 1e38])
def test_non_finite_update_is_rolled_back_and_skipped(lr: float) -> None:
    model, opt, runner = _runner(lr)
    before = model.weight.detach().clone()
    out = _step(runner)
    assert out.skipped and all(math.isnan(v) for v in out.values)
    assert torch.equal(model.weight.detach(), before)
    assert opt.state.get(model.weight, {}) == {}  # no momentum buffer left from the bad update


def test_rollback_restores_the_optimizer_state_of_earlier_steps() -> None:
    model, opt, runner = _runner(0.1)
    assert not _step(runner).skipped
    weight = model.weight.detach().clone()
    buffer = opt.state[model.weight]["momentum_buffer"].clone()
    for group in opt.param_groups:
        group["lr"] = math.nan
    assert _step(runner).skipped
    assert torch.equal(model.weight.detach(), weight)
    assert torch.equal(opt.state[model.weight]["momentum_buffer"], buffer)
    for group in opt.param_groups:
        group["lr"] = 0.1
    out = _step(runner)
    assert not out.skipped and torch.isfinite(model.weight).all()
    assert not torch.equal(model.weight.detach(), weight)
