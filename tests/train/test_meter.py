"""The loss meter: exact running means of named losses over a window."""

from __future__ import annotations

import pytest

from maskrcnn.train.meter import LossMeter


def test_means_are_the_window_averages_and_reset_clears() -> None:
    meter = LossMeter()
    assert len(meter) == 0 and meter.means() == {}
    steps = [[0.1, 0.7], [0.2, 0.3], [0.3, 1e-9]]
    for values in steps:
        meter.add(["loss_total", "loss_a"], values)
    assert len(meter) == 3 and meter.names == ("loss_total", "loss_a")
    expected = {  # the same float sums as sum() over the window, in step order
        "loss_total": sum(v[0] for v in steps) / 3,
        "loss_a": sum(v[1] for v in steps) / 3,
    }
    assert meter.means() == expected
    meter.reset()
    assert len(meter) == 0 and meter.means() == {}
    meter.add(["loss_b"], [2.0])  # a new window may name other losses
    assert meter.means() == {"loss_b": 2.0}


def test_mismatched_names_or_values_are_errors() -> None:
    meter = LossMeter()
    with pytest.raises(ValueError, match="2 names but 1 values"):
        meter.add(["a", "b"], [1.0])
    meter.add(["a"], [1.0])
    with pytest.raises(ValueError, match="differ"):
        meter.add(["b"], [1.0])
