"""``model_final.safetensors``: the deployable model of a finished run (rank 0)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from maskrcnn.train.checkpoint import export_model
from maskrcnn.train.hooks.base import Hook, LoopState

if TYPE_CHECKING:
    from maskrcnn.modeling import MaskRCNN

logger = logging.getLogger("maskrcnn.train")

FINAL_MODEL = "model_final.safetensors"


class FinalModelHook(Hook):
    """Exports ``model`` to ``path`` when the run finished (max_iter or time budget).

    Args:
        model: a :class:`~maskrcnn.modeling.MaskRCNN` (its configuration carries the category
            names).
        path: the file to write.
        enabled: write it (rank 0).

    Attributes:
        written: the file written (None until then).
    """

    def __init__(self, model: MaskRCNN, path: Path, *, enabled: bool) -> None:
        self.model = model
        self.path = path
        self.enabled = enabled
        self.written: Path | None = None

    def after_train(self, loop: LoopState) -> None:
        if self.enabled and loop.finished:
            self.written = export_model(self.model, self.path)
            logger.info("wrote %s", self.written)
