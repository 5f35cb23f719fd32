"""Training configuration: one frozen dataclass, serialisable, with checked values.

A :class:`TrainConfig` says what to train on (COCO files), which model (a preset plus
``"key=value"`` overrides of :class:`~maskrcnn.config.ModelConfig`), and how (batch, schedule,
precision, checkpoints, evaluation). It is stored in every checkpoint, so ``--resume`` can
continue a run from its folder alone.

The learning rate follows the linear scaling rule: ``base_lr`` is the rate for
``base_batch_size`` images per step (0.02 for 16, the paper's setting) and the rate used is
``base_lr * batch_size / base_batch_size`` (:attr:`TrainConfig.lr`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from maskrcnn.config import PRESETS, ModelConfig, override, preset

AmpMode = Literal["none", "auto", "bf16", "fp16"]
AMP_MODES = ("none", "auto", "bf16", "fp16")
OptimizerKind = Literal["sgd", "adamw"]
OPTIMIZERS = ("sgd", "adamw")

# Fields the dataset decides; an override of them is an error.
_DATASET_FIELDS = ("num_classes", "category_names")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data itself.

    Attributes:
        train_ann: COCO instances JSON of the training set.
        train_images: folder the training ``file_name`` entries are relative to.
        val_ann: COCO JSON of the validation set (None: no evaluation).
        val_images: folder of the validation images.
        out_dir: the run folder (checkpoints, metrics.jsonl, curves.png, model_final).
        preset: a :data:`maskrcnn.config.PRESETS` name.
        model_overrides: ``"key=value"`` strings applied to the preset with
            :func:`maskrcnn.config.override` (values parsed as JSON when they parse, else
            strings; JSON lists become tuples), e.g. ``"input.min_size=[512]"``.
        batch_size: images per optimisation step over all processes (divisible by the
            number of processes).
        max_iter: optimisation steps of the whole run.
        max_minutes: wall-clock budget of one invocation; when it runs out the run stops
            cleanly (checkpoint, evaluation, final model). None: no budget.
        base_lr: learning rate for ``base_batch_size`` images per step.
        base_batch_size: the batch ``base_lr`` refers to (linear scaling).
        optimizer: "sgd" (momentum, L2 weight decay: the paper's recipe) or "adamw" (Adam
            with decoupled weight decay; ``momentum`` is its beta1, beta2 is 0.999).
        momentum: SGD momentum (AdamW's beta1).
        weight_decay: L2 penalty of SGD (AdamW: decoupled decay per step, times the rate).
        no_decay_norm_bias: no weight decay on 1-D parameters (biases, norm scales/shifts).
        warmup_iters: steps of linear warm-up.
        warmup_factor: learning-rate factor at step 0 of the warm-up.
        lr_steps: step-decay milestones as fractions of ``max_iter``, increasing in (0, 1].
        gamma: factor applied at each milestone.
        clip_grad_norm: clip the global gradient norm to this value (None: no clipping).
        amp: mixed precision: "none", "bf16" (CPU or CUDA autocast), "fp16" (CUDA only, with
            a gradient scaler) or "auto" (bf16 on CPU, fp16 on CUDA).
        checkpoint_period: steps between checkpoints (``last.ckpt``).
        keep_checkpoints: how many ``iter_XXXXXXX.ckpt`` to keep beside ``last.ckpt``
            (0: none, negative: all).
        eval_period: steps between evaluations on the validation set (0: only at the end).
        eval_max_images: evaluate on the first N validation images only (None: all).
        log_period: steps between metrics.jsonl lines and progress-bar updates.
        seed: seed of model initialisation, data order and augmentation.
        num_workers: data-loading processes per training process.
        flip_prob: probability of a horizontal flip of each training image.
        skip_bad_images: replace unreadable training images by the next good one.
        imagenet: ImageNet backbone initialisation (a published name or a local file).
        device: "auto" (CUDA if available), "cpu", "cuda" or "cuda:N".
        sync_bn: convert BatchNorm layers to SyncBatchNorm when distributed.
        max_nonfinite: consecutive non-finite losses that stop the run.
        progress: show a progress bar.
    """

    train_ann: str
    train_images: str
    val_ann: str | None = None
    val_images: str | None = None
    out_dir: str = "runs/train"
    preset: str = "r50_fpn"
    model_overrides: tuple[str, ...] = ()
    batch_size: int = 16
    max_iter: int = 90_000
    max_minutes: float | None = None
    base_lr: float = 0.02
    base_batch_size: int = 16
    optimizer: OptimizerKind = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = False
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    lr_steps: tuple[float, ...] = (0.67, 0.89)
    gamma: float = 0.1
    clip_grad_norm: float | None = None
    amp: AmpMode = "none"
    checkpoint_period: int = 5000
    keep_checkpoints: int = 2
    eval_period: int = 0
    eval_max_images: int | None = None
    log_period: int = 20
    seed: int = 0
    num_workers: int = 2
    flip_prob: float = 0.5
    skip_bad_images: bool = False
    imagenet: str | None = None
    device: str = "auto"
    sync_bn: bool = False
    max_nonfinite: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        # Normalise sequences (JSON gives lists) so that equality and hashing work.
        object.__setattr__(self, "model_overrides", tuple(self.model_overrides))
        object.__setattr__(self, "lr_steps", tuple(float(s) for s in self.lr_steps))
        self._check()

    def _check(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"TrainConfig.{name}: {why} (got {getattr(self, name)!r})")

        for name in ("train_ann", "train_images", "out_dir", "preset", "device"):
            if not isinstance(getattr(self, name), str):
                fail(name, "must be a string")
        for name in ("val_ann", "val_images", "imagenet"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                fail(name, "must be a string or None")
        for name in ("no_decay_norm_bias", "skip_bad_images", "sync_bn", "progress"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be true or false")
        for name in ("batch_size", "max_iter", "base_batch_size", "checkpoint_period"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "must be a positive integer")
        for name in ("warmup_iters", "eval_period", "log_period", "seed", "num_workers"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "must be a non-negative integer")
        if self.log_period < 1:
            fail("log_period", "must be at least 1")
        if not _is_int(self.keep_checkpoints):
            fail("keep_checkpoints", "must be an integer")
        if not _is_int(self.max_nonfinite) or self.max_nonfinite < 1:
            fail("max_nonfinite", "must be a positive integer")
        for name in ("base_lr", "momentum", "weight_decay", "gamma"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "must be a non-negative number")
        if not _is_number(self.warmup_factor) or not 0 < self.warmup_factor <= 1:
            fail("warmup_factor", "must be in (0, 1]")
        if not _is_number(self.flip_prob) or not 0.0 <= self.flip_prob <= 1.0:
            fail("flip_prob", "must be in [0, 1]")
        if self.max_minutes is not None and (
            not _is_number(self.max_minutes) or self.max_minutes <= 0
        ):
            fail("max_minutes", "must be a positive number or None")
        if self.clip_grad_norm is not None and (
            not _is_number(self.clip_grad_norm) or self.clip_grad_norm <= 0
        ):
            fail("clip_grad_norm", "must be a positive number or None")
        if self.eval_max_images is not None and (
            not _is_int(self.eval_max_images) or self.eval_max_images < 1
        ):
            fail("eval_max_images", "must be a positive integer or None")
        steps = self.lr_steps
        if any(not 0 < s <= 1 for s in steps) or any(a >= b for a, b in zip(steps, steps[1:])):
            fail("lr_steps", "must be increasing fractions of max_iter in (0, 1]")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"must be one of {list(OPTIMIZERS)}")
        if self.amp not in AMP_MODES:
            fail("amp", f"must be one of {list(AMP_MODES)}")
        if self.preset not in PRESETS:
            fail("preset", f"unknown preset; choose one of {sorted(PRESETS)}")
        if (self.val_ann is None) != (self.val_images is None):
            fail("val_ann", "val_ann and val_images go together (give both or neither)")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            fail("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        for item in self.model_overrides:
            parse_assignment(item, where="TrainConfig.model_overrides")

    @property
    def lr(self) -> float:
        """The learning rate after linear scaling to ``batch_size``."""
        return self.base_lr * self.batch_size / self.base_batch_size

    def milestones(self) -> tuple[int, ...]:
        """The step-decay iterations (``lr_steps`` times ``max_iter``, rounded)."""
        return tuple(round(s * self.max_iter) for s in self.lr_steps)

    def model_config(
        self, num_classes: int = 91, category_names: tuple[str, ...] = ()
    ) -> ModelConfig:
        """The preset with ``model_overrides`` applied and the dataset's classes set.

        Raises:
            ValueError: an unknown key, or an override of ``num_classes``/``category_names``
                (the dataset decides those).
        """
        cfg = preset(self.preset, num_classes)
        for item in self.model_overrides:
            key, value = parse_assignment(item, where="model override")
            if key in _DATASET_FIELDS:
                raise ValueError(f"model override {item!r}: {key} is set from the dataset")
            try:
                cfg = override(cfg, key, _coerced(_current(cfg, key), value, item))
            except ValueError as err:
                raise ValueError(f"model override {item!r}: {err}") from err
        return cfg.replace(num_classes=num_classes, category_names=tuple(category_names))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with fields replaced (checked again)."""
        return dataclasses.replace(self, **changes)

    def with_assignments(self, items: list[str] | tuple[str, ...]) -> TrainConfig:
        """A copy with ``"field=value"`` strings applied (``--train-set``)."""
        names = {f.name for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for item in items:
            key, value = parse_assignment(item, where="train setting")
            if key not in names:
                raise ValueError(f"train setting {item!r}: unknown field {key!r} of TrainConfig")
            changes[key] = value
        return self.replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``ValueError`` naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"TrainConfig: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}")
        return TrainConfig(**data)

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: name -> (self's value, other's value)."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        }


def parse_assignment(item: str, *, where: str = "setting") -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)``.

    The value is parsed as JSON when it parses (numbers, booleans, null, lists, objects) and
    kept as a string otherwise; JSON lists become tuples (the config dataclasses use tuples).
    """
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"{where} {item!r}: expected key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"{where} {item!r}: empty key")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return key, _tupled(value)


def _current(cfg: ModelConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or not hasattr(node, part):
            raise ValueError(f"unknown config key {key!r}")
        node = getattr(node, part)
    return node


def _coerced(old: Any, new: Any, item: str) -> Any:
    """``new`` converted to ``old``'s type where that is lossless; a clear error otherwise."""
    if dataclasses.is_dataclass(old):
        raise ValueError(f"{item!r} names a whole section; set its fields (e.g. key.field=...)")
    if isinstance(old, bool) or isinstance(new, bool):
        if isinstance(old, bool) and isinstance(new, bool):
            return new
    elif isinstance(old, float) and _is_number(new):
        return float(new)
    elif isinstance(old, int) and _is_int(new):
        return new
    elif isinstance(old, str) and isinstance(new, str):
        return new
    elif isinstance(old, tuple) and isinstance(new, tuple):
        return new
    elif old is None:
        return new
    want = "a list, e.g. [1, 2]" if isinstance(old, tuple) else type(old).__name__
    raise ValueError(f"expected {want} (the current value is {old!r}), got {new!r}")


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
