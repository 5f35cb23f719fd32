"""The training loop's hooks: one small class per piece of work around the steps.

See :mod:`maskrcnn.train.hooks.base` for the interface (:class:`Hook`, :class:`LoopState`)
and the call order.
"""

from maskrcnn.train.hooks.base import Hook, LoopState, StopReason
from maskrcnn.train.hooks.budget import BudgetHook, EvalTimer
from maskrcnn.train.hooks.checkpoint import CheckpointHook
from maskrcnn.train.hooks.curves import CurvesHook
from maskrcnn.train.hooks.evaluation import EvalHook
from maskrcnn.train.hooks.final_model import FinalModelHook
from maskrcnn.train.hooks.metrics import MetricsHook
from maskrcnn.train.hooks.nonfinite import NonFiniteHook, NonFiniteLossError
from maskrcnn.train.hooks.progress import ProgressHook
from maskrcnn.train.hooks.threads import ThreadsHook

__all__ = [
    "BudgetHook",
    "CheckpointHook",
    "CurvesHook",
    "EvalHook",
    "EvalTimer",
    "FinalModelHook",
    "Hook",
    "LoopState",
    "MetricsHook",
    "NonFiniteHook",
    "NonFiniteLossError",
    "ProgressHook",
    "StopReason",
    "ThreadsHook",
]
