"""Per-step seeding: every step's randomness is a function of ``(seed, rank, iteration)``."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_step(seed: int, rank: int, iteration: int) -> None:
    """Seeds ``random``, NumPy and torch (all devices) for one step of one rank.

    Every step's randomness (e.g. the RPN and RoI sampling) is then a function of
    ``(seed, rank, iteration)``: a resumed run draws the same numbers as an uninterrupted
    one whatever happened in between (evaluation, loader restarts).
    """
    state = np.random.SeedSequence([seed, rank, iteration]).generate_state(2, dtype=np.uint64)
    value = int(state[0]) >> 1
    random.seed(value)
    np.random.seed(int(state[1]) % 2**32)
    torch.manual_seed(value)
