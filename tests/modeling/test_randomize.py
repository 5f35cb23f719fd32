"""randomize_: seeded random weights and norm statistics for parity checks."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from maskrcnn.modeling.layers import FrozenBatchNorm2d
from maskrcnn.modeling.randomize import randomize_


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        FrozenBatchNorm2d(8),
        torchvision.ops.FrozenBatchNorm2d(8),
        nn.GroupNorm(2, 8),
        nn.ConvTranspose2d(8, 4, 2, stride=2),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def test_every_weight_and_statistic_is_redrawn_deterministically():
    torch.manual_seed(0)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    randomize_(net, seed=5)
    after = net.state_dict()
    for key, value in after.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert not torch.equal(value, before[key]), key
    for key in [k for k in after if k.endswith("running_var")]:
        assert (after[key] >= 0.5).all(), key
    again = randomize_(_net(), seed=5).state_dict()
    assert all(torch.equal(after[k], again[k]) for k in after)
    other = randomize_(_net(), seed=6).state_dict()
    assert not torch.equal(after["0.weight"], other["0.weight"])


def test_weights_are_fan_in_scaled():
    wide = randomize_(nn.Linear(10_000, 4), seed=0)
    assert abs(wide.weight.std().item() - 0.01) < 0.001
    deconv = randomize_(nn.ConvTranspose2d(64, 8, 2, stride=2), seed=0)
    assert abs(deconv.weight.std().item() - (1 / 64) ** 0.5) < 0.02
