"""COCO evaluation every ``period`` steps and at the end (reusing a fresh one)."""

from __future__ import annotations

from collections.abc import Callable

from maskrcnn.evaluation.coco_eval import EvalResult
from maskrcnn.train.hooks.base import Hook, LoopState


class FinalEvaluationError(RuntimeError):
    """The evaluation after training failed; the trained model was written before it."""


class EvalHook(Hook):
    """Calls ``evaluate(iteration)`` every ``period`` steps (0: never) and when the run ends.

    The final evaluation is skipped when one was just made at the last step (it is reused),
    and when the run was interrupted or stopped by an error. ``evaluate`` runs on every rank
    (the evaluation is gathered) and returns None without a validation set. A failing final
    evaluation raises :class:`FinalEvaluationError` whose message ends with ``retry_hint``
    (how to evaluate the written model again).

    Attributes:
        final: the final evaluation (None until the run finished, or without validation set).
    """

    def __init__(
        self, evaluate: Callable[[int], EvalResult | None], *, period: int, retry_hint: str = ""
    ) -> None:
        self.evaluate = evaluate
        self.period = period
        self.retry_hint = retry_hint
        self.latest: tuple[int, EvalResult | None] | None = None
        self.final: EvalResult | None = None

    def after_step(self, loop: LoopState) -> None:
        if self.period and loop.iteration % self.period == 0:
            self.latest = (loop.iteration, self.evaluate(loop.iteration))

    def after_train(self, loop: LoopState) -> None:
        if not loop.finished:
            return
        if self.latest is not None and self.latest[0] == loop.iteration:
            self.final = self.latest[1]
            return
        try:
            self.final = self.evaluate(loop.iteration)
        except Exception as err:
            hint = f"; {self.retry_hint}" if self.retry_hint else ""
            raise FinalEvaluationError(
                f"the evaluation after step {loop.iteration} failed: {err}{hint}"
            ) from err
