"""eval_mode: eval inside the block, the previous mode restored after (also on errors)."""

from __future__ import annotations

import pytest
from torch import nn

from maskrcnn.modeling.modes import eval_mode


def test_eval_inside_and_mode_restored():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with eval_mode(model) as inside:
        assert inside is model
        assert not any(m.training for m in model.modules())
    assert all(m.training for m in model.modules())
    model.eval()
    with eval_mode(model):
        pass
    assert not any(m.training for m in model.modules())


def test_mode_restored_after_an_error():
    model = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training
