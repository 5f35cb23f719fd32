"""The flat training configuration of earlier versions, mapped onto the sections.

Run folders and checkpoints written before the sections existed hold one flat mapping
(``{"train_ann": ..., "base_lr": ..., "amp": "none", "model_overrides": ["k=v", ...]}``), and
``--train-set`` users wrote those flat names. :func:`sections_from_flat` converts such a
mapping and :func:`dotted` one name; ``amp`` becomes ``runtime.precision`` (``"none"`` ->
``"fp32"``) and ``model_overrides`` strings are parsed into ``model.overrides``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from maskrcnn.train.assignments import parse_assignments

# flat field of earlier versions -> dotted path of the sectioned TrainConfig
FLAT_FIELDS: dict[str, str] = {
    "train_ann": "data.train_ann",
    "train_images": "data.train_images",
    "val_ann": "data.val_ann",
    "val_images": "data.val_images",
    "batch_size": "data.batch_size",
    "num_workers": "data.num_workers",
    "flip_prob": "data.flip_prob",
    "skip_bad_images": "data.skip_bad_images",
    "out_dir": "out_dir",
    "preset": "model.preset",
    "model_overrides": "model.overrides",
    "imagenet": "model.imagenet",
    "optimizer": "optim.kind",
    "base_lr": "optim.base_lr",
    "base_batch_size": "optim.base_batch_size",
    "momentum": "optim.momentum",
    "weight_decay": "optim.weight_decay",
    "no_decay_norm_bias": "optim.no_decay_norm_bias",
    "clip_grad_norm": "optim.clip_grad_norm",
    "max_iter": "schedule.max_iter",
    "warmup_iters": "schedule.warmup_iters",
    "warmup_factor": "schedule.warmup_factor",
    "lr_steps": "schedule.lr_steps",
    "gamma": "schedule.gamma",
    "checkpoint_period": "checkpoint.period",
    "keep_checkpoints": "checkpoint.keep",
    "eval_period": "eval.period",
    "eval_max_images": "eval.max_images",
    "log_period": "log.period",
    "progress": "log.progress",
    "amp": "runtime.precision",
    "device": "runtime.device",
    "seed": "runtime.seed",
    "sync_bn": "runtime.sync_bn",
    "max_minutes": "runtime.max_minutes",
    "max_nonfinite": "runtime.max_nonfinite",
}

# the old ``amp`` values (``--amp`` on the command line) -> precision
AMP_MODES = ("none", "auto", "bf16", "fp16")
AMP_TO_PRECISION: dict[str, str] = {"none": "fp32", "auto": "auto", "bf16": "bf16", "fp16": "fp16"}


def precision_of_amp(amp: object) -> str:
    """The precision of an old ``amp`` setting; an unknown one raises a ``ValueError``."""
    if not isinstance(amp, str) or amp not in AMP_TO_PRECISION:
        raise ValueError(f"TrainConfig amp: must be one of {list(AMP_MODES)} (got {amp!r})")
    return AMP_TO_PRECISION[amp]


def dotted(key: str, value: Any) -> tuple[str, Any]:
    """A flat name and its value as ``(dotted path, value)``; other keys pass unchanged."""
    path = FLAT_FIELDS.get(key, key)
    if key == "amp":
        value = precision_of_amp(value)
    elif key == "model_overrides" and not isinstance(value, Mapping):
        if isinstance(value, str):
            value = [value]
        value = parse_assignments(value, where="model override")
    return path, value


def sections_from_flat(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flat configuration mapping as the sectioned one (for ``TrainConfig.from_dict``).

    Raises:
        ValueError: keys that are no flat field (named), a bad ``amp`` or override string.
    """
    unknown = sorted(set(flat) - set(FLAT_FIELDS))
    if unknown:
        raise ValueError(f"TrainConfig: unknown field(s) {unknown}")
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        path, value = dotted(key, value)
        section, _, name = path.partition(".")
        if name:
            nested.setdefault(section, {})[name] = value
        else:
            nested[section] = value
    return nested
