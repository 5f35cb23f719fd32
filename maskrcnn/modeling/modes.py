"""Module modes: run a block of code with a model in eval mode, then put it back as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts ``model`` in eval mode for the ``with`` block; restores its mode after, even on error.

    Only the top-level ``training`` flag is remembered: ``model.train(was_training)`` sets every
    submodule back to it, as ``model.train()`` / ``model.eval()`` do.

    Yields:
        ``model`` itself.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
