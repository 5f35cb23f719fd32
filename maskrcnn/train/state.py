"""A run folder's previous state: refuse to overwrite it, check it fits, and restore it.

``--resume`` continues the run whose ``last.ckpt`` is in the output folder. The checkpoint
must describe the same model (configuration and categories); training settings may change
(each change is logged), e.g. a longer ``max_iter`` or another time budget.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskrcnn.config import ModelConfig
from maskrcnn.data.categories import CategoryMap
from maskrcnn.train import checkpoint as ckpt
from maskrcnn.train.config import TrainConfig
from maskrcnn.train.resumable_data import TrainData
from maskrcnn.train.rng import restore_rng
from maskrcnn.train.schedule import WarmupMultiStepLR

logger = logging.getLogger("maskrcnn.train")


def previous_run(run_dir: Path, cfg: TrainConfig, *, resume: bool) -> ckpt.TrainingState | None:
    """The checkpoint to continue from, or None for a new run.

    Raises:
        ValueError: the folder already holds a run and ``resume`` is False, or its checkpoint
            cannot be read.
    """
    last = run_dir / ckpt.LAST
    if not resume:
        if last.exists() or ckpt.list_iter_checkpoints(run_dir):
            raise ValueError(
                f"{run_dir} already holds a training run ({last.name}); pass --resume to "
                "continue it, or choose another output folder"
            )
        return None
    if not last.exists():
        logger.warning("nothing to resume in %s: starting a new run", run_dir)
        return None
    state = ckpt.load_checkpoint(last)
    try:
        before = TrainConfig.from_dict(state.train_config)
    except (TypeError, ValueError) as err:
        logger.warning("%s: cannot read its training configuration (%s)", last, err)
    else:
        for name, (old, new) in before.differences(cfg).items():
            logger.warning("resuming with %s = %r (the checkpoint had %r)", name, new, old)
    logger.info("resuming from %s (step %d)", last, state.iteration)
    return state


def check_compatible(
    state: ckpt.TrainingState,
    *,
    where: str,
    categories: CategoryMap,
    model_cfg: ModelConfig,
    train_ann: str,
) -> None:
    """Raises a ``ValueError`` when the checkpoint's categories or model differ from ours."""
    if state.categories != categories.to_dict():
        raise ValueError(
            f"{where}: trained on categories {state.categories.get('names')}, but {train_ann} "
            f"has {list(categories.names)}"
        )
    saved = ckpt.model_config_from(state, where)
    if saved != model_cfg:
        diff = _dict_diff(saved.to_dict(), model_cfg.to_dict())
        raise ValueError(
            f"{where}: the model configuration differs from the checkpoint's at {diff}; "
            "resume with the same --preset and --set values"
        )


def restore(
    state: ckpt.TrainingState,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupMultiStepLR,
    scaler: torch.amp.GradScaler | None,
    data: TrainData,
    rank: int,
) -> None:
    """Loads weights, optimizer, schedule, scaler, data position and this rank's RNG states."""
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    if scaler is not None and state.scaler:
        scaler.load_state_dict(state.scaler)
    per_epoch = data.batches_per_epoch
    saved = state.data
    if saved.batches_per_epoch == per_epoch:
        data.seek(saved.epoch, saved.batch)
    else:
        logger.warning(
            "the data gives %d batches per epoch, the checkpoint's run had %s: the data order "
            "from here differs from an uninterrupted run",
            per_epoch,
            saved.batches_per_epoch or "an unknown number",
        )
        data.seek(*divmod(int(state.iteration), per_epoch))
    if state.rng:
        restore_rng(state.rng[rank] if rank < len(state.rng) else state.rng[0])


def _dict_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _dict_diff(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key} ({x!r} -> {y!r})")
    return keys
