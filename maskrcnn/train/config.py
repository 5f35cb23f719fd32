"""Training configuration: frozen dataclasses in sections, serialisable, with checked values.

A :class:`TrainConfig` says what to train on (``data``), which model (``model``: a preset and
checked overrides), and how: ``optim`` (optimizer, learning rate), ``schedule`` (steps,
warm-up, decay), ``checkpoint``, ``eval``, ``log`` and ``runtime`` (device, precision, seed,
time budget). It is stored in every checkpoint and in ``train_config.json``, so ``--resume``
can continue a run from its folder alone.

:meth:`TrainConfig.from_dict` also reads the flat layout of earlier versions (one level of
fields, ``model_overrides`` as ``"key=value"`` strings, ``amp``), and
:meth:`TrainConfig.with_values` takes dotted paths (``optim.base_lr``) as well as those flat
names (:mod:`maskrcnn.train.config_compat`).

The learning rate follows the linear scaling rule: ``optim.base_lr`` is the rate for
``optim.base_batch_size`` images per step (0.02 for 16, the paper's setting) and the rate used
is ``base_lr * data.batch_size / base_batch_size`` (:attr:`TrainConfig.lr`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from maskrcnn.modeling.precision import Precision, check_precision
from maskrcnn.train import config_compat
from maskrcnn.train.assignments import listed, parse_assignment, tupled
from maskrcnn.train.model_spec import ModelSpec

OptimizerKind = Literal["sgd", "adamw"]
OPTIMIZERS = ("sgd", "adamw")


class _Check:
    """Raises ``ValueError("TrainConfig.<section>.<field>: <why> (got <value>)")``."""

    def __init__(self, section: Any, name: str) -> None:
        self.section, self.prefix = section, f"TrainConfig.{name}"

    def fail(self, name: str, why: str) -> None:
        value = getattr(self.section, name)
        raise ValueError(f"{self.prefix}.{name}: {why} (got {value!r})")

    def strings(self, *names: str, optional: bool = False) -> None:
        for name in names:
            value = getattr(self.section, name)
            if not (isinstance(value, str) or (optional and value is None)):
                self.fail(name, "must be a string or None" if optional else "must be a string")

    def bools(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self.section, name), bool):
                self.fail(name, "must be true or false")

    def ints(self, *names: str, minimum: int | None, optional: bool = False) -> None:
        want = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}[minimum]
        for name in names:
            value = getattr(self.section, name)
            if optional and value is None:
                continue
            if not _is_int(value) or (minimum is not None and value < minimum):
                self.fail(name, f"must be {want}" + (" or None" if optional else ""))

    def numbers(self, *names: str, positive: bool = False, optional: bool = False) -> None:
        for name in names:
            value = getattr(self.section, name)
            if optional and value is None:
                continue
            if not _is_number(value) or (value <= 0 if positive else value < 0):
                want = "a positive number" if positive else "a non-negative number"
                self.fail(name, f"must be {want}" + (" or None" if optional else ""))


@dataclass(frozen=True)
class DataConfig:
    """The data and how it is batched.

    Attributes:
        train_ann: COCO instances JSON of the training set.
        train_images: folder the training ``file_name`` entries are relative to.
        val_ann: COCO JSON of the validation set (None: no evaluation).
        val_images: folder of the validation images.
        batch_size: images per optimisation step over all processes (divisible by the
            number of processes).
        num_workers: data-loading processes per training process.
        flip_prob: probability of a horizontal flip of each training image.
        skip_bad_images: replace unreadable training images by the next good one.
    """

    train_ann: str
    train_images: str
    val_ann: str | None = None
    val_images: str | None = None
    batch_size: int = 16
    num_workers: int = 2
    flip_prob: float = 0.5
    skip_bad_images: bool = False

    def __post_init__(self) -> None:
        check = _Check(self, "data")
        check.strings("train_ann", "train_images")
        check.strings("val_ann", "val_images", optional=True)
        check.ints("batch_size", minimum=1)
        check.ints("num_workers", minimum=0)
        check.bools("skip_bad_images")
        if not _is_number(self.flip_prob) or not 0.0 <= self.flip_prob <= 1.0:
            check.fail("flip_prob", "must be in [0, 1]")
        if (self.val_ann is None) != (self.val_images is None):
            check.fail("val_ann", "val_ann and val_images go together (give both or neither)")


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer.

    Attributes:
        kind: "sgd" (momentum, L2 weight decay: the paper's recipe) or "adamw" (Adam with
            decoupled weight decay; ``momentum`` is its beta1, beta2 is 0.999).
        base_lr: learning rate for ``base_batch_size`` images per step.
        base_batch_size: the batch ``base_lr`` refers to (linear scaling).
        momentum: SGD momentum (AdamW's beta1).
        weight_decay: L2 penalty of SGD (AdamW: decoupled decay per step, times the rate).
        no_decay_norm_bias: no weight decay on 1-D parameters (biases, norm scales/shifts).
        clip_grad_norm: clip the global gradient norm to this value (None: no clipping).
    """

    kind: OptimizerKind = "sgd"
    base_lr: float = 0.02
    base_batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = False
    clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        check = _Check(self, "optim")
        if self.kind not in OPTIMIZERS:
            check.fail("kind", f"the optimizer must be one of {list(OPTIMIZERS)}")
        check.numbers("base_lr", "momentum", "weight_decay")
        if not 0.0 <= self.momentum < 1.0:
            check.fail("momentum", "must be in [0, 1)")
        check.ints("base_batch_size", minimum=1)
        check.bools("no_decay_norm_bias")
        check.numbers("clip_grad_norm", positive=True, optional=True)


@dataclass(frozen=True)
class ScheduleConfig:
    """How long, and the learning-rate schedule (linear warm-up, then step decay).

    Attributes:
        max_iter: optimisation steps of the whole run.
        warmup_iters: steps of linear warm-up.
        warmup_factor: learning-rate factor at step 0 of the warm-up.
        lr_steps: step-decay milestones as fractions of ``max_iter``, increasing in (0, 1].
        gamma: factor applied at each milestone.
        fit_to_budget: with a time budget (``runtime.max_minutes``), fit the step count to
            it: from the measured step and evaluation times, the run takes as many steps as
            end, evaluated, inside the budget (at most ``max_iter``), with the warm-up and
            milestones at the same fractions of that count (:mod:`maskrcnn.train.budget`).
            False: ``max_iter`` steps, cut off where the budget runs out.
    """

    max_iter: int = 90_000
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    lr_steps: tuple[float, ...] = (0.67, 0.89)
    gamma: float = 0.1
    fit_to_budget: bool = True

    def __post_init__(self) -> None:
        check = _Check(self, "schedule")
        if isinstance(self.lr_steps, (list, tuple)) and all(map(_is_number, self.lr_steps)):
            object.__setattr__(self, "lr_steps", tuple(float(s) for s in self.lr_steps))
        else:
            check.fail("lr_steps", "must be a list of numbers")
        check.ints("max_iter", minimum=1)
        check.ints("warmup_iters", minimum=0)
        check.numbers("gamma")
        check.bools("fit_to_budget")
        if not _is_number(self.warmup_factor) or not 0 < self.warmup_factor <= 1:
            check.fail("warmup_factor", "must be in (0, 1]")
        steps = self.lr_steps
        if any(not 0 < s <= 1 for s in steps) or any(a >= b for a, b in zip(steps, steps[1:])):
            check.fail("lr_steps", "must be increasing fractions of max_iter in (0, 1]")

    def milestones(self) -> tuple[int, ...]:
        """The step-decay iterations (``lr_steps`` times ``max_iter``, rounded)."""
        return tuple(round(s * self.max_iter) for s in self.lr_steps)


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints of the run folder.

    Attributes:
        period: steps between checkpoints (``last.ckpt``).
        keep: how many ``iter_XXXXXXX.ckpt`` to keep beside ``last.ckpt`` (0: none, negative:
            all).
    """

    period: int = 5000
    keep: int = 2

    def __post_init__(self) -> None:
        check = _Check(self, "checkpoint")
        check.ints("period", minimum=1)
        check.ints("keep", minimum=None)


@dataclass(frozen=True)
class EvalConfig:
    """COCO evaluation on the validation set.

    Attributes:
        period: steps between evaluations (0: only at the end).
        max_images: evaluate on the first N validation images only (None: all).
    """

    period: int = 0
    max_images: int | None = None

    def __post_init__(self) -> None:
        check = _Check(self, "eval")
        check.ints("period", minimum=0)
        check.ints("max_images", minimum=1, optional=True)


@dataclass(frozen=True)
class LogConfig:
    """What the run reports as it goes.

    Attributes:
        period: steps between ``metrics.jsonl`` lines and progress-bar updates.
        progress: show a progress bar.
    """

    period: int = 20
    progress: bool = True

    def __post_init__(self) -> None:
        check = _Check(self, "log")
        check.ints("period", minimum=1)
        check.bools("progress")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the steps run.

    Attributes:
        device: "auto" (CUDA if available), "cpu", "cuda" or "cuda:N".
        precision: one of :data:`maskrcnn.modeling.precision.PRECISIONS`: "fp32", "bf16"
            (CPU or CUDA autocast; fp32 with a warning on CPUs without fast bf16), "fp16"
            (CUDA only, with a gradient scaler) or "auto" (fp16 on CUDA, bf16 on a CPU with
            fast bf16, else fp32); resolved on the device by
            :func:`~maskrcnn.modeling.precision.resolve_precision`.
        seed: seed of model initialisation, data order, augmentation and every step.
        sync_bn: convert BatchNorm layers to SyncBatchNorm when distributed.
        max_minutes: wall-clock budget of one invocation, the final evaluation included:
            with ``schedule.fit_to_budget`` the step count is fitted to it, and when it runs
            out the run stops cleanly anyway (checkpoint, evaluation, final model). None: no
            budget.
        max_nonfinite: consecutive non-finite losses that stop the run.
        threads: torch's CPU thread count. None: ``OMP_NUM_THREADS`` if set, else one per
            core not busy elsewhere, measured at start-up and every 20 s
            (:mod:`maskrcnn.train.threads`), so that a process holding a core does not stall
            every step; a fixed count keeps runs bit-identical across machines' loads.
    """

    device: str = "auto"
    precision: Precision = "fp32"
    seed: int = 0
    sync_bn: bool = False
    max_minutes: float | None = None
    max_nonfinite: int = 10
    threads: int | None = None

    def __post_init__(self) -> None:
        check = _Check(self, "runtime")
        check.strings("device")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            check.fail("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        check_precision(self.precision, where="TrainConfig.runtime.precision")
        check.ints("seed", minimum=0)
        check.bools("sync_bn")
        check.numbers("max_minutes", positive=True, optional=True)
        check.ints("max_nonfinite", minimum=1)
        check.ints("threads", minimum=1, optional=True)


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelSpec,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "checkpoint": CheckpointConfig,
    "eval": EvalConfig,
    "log": LogConfig,
    "runtime": RuntimeConfig,
}


# The section names of a TrainConfig, in order.
SECTIONS: tuple[str, ...] = tuple(_SECTIONS)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data itself.

    Attributes:
        data: :class:`DataConfig` (the annotation files, batch size, loading).
        out_dir: the run folder (checkpoints, metrics.jsonl, curves.png, model_final).
        model: :class:`~maskrcnn.train.model_spec.ModelSpec` (preset and overrides).
        optim: :class:`OptimConfig`.
        schedule: :class:`ScheduleConfig`.
        checkpoint: :class:`CheckpointConfig`.
        eval: :class:`EvalConfig`.
        log: :class:`LogConfig`.
        runtime: :class:`RuntimeConfig`.
    """

    data: DataConfig
    out_dir: str = "runs/train"
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.out_dir, str):
            raise ValueError(f"TrainConfig.out_dir: must be a string (got {self.out_dir!r})")
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(
                    f"TrainConfig.{name}: expected {cls.__name__}, "
                    f"got {type(getattr(self, name)).__name__}"
                )

    @property
    def lr(self) -> float:
        """The learning rate after linear scaling to ``data.batch_size``."""
        return self.optim.base_lr * self.data.batch_size / self.optim.base_batch_size

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with whole sections (or ``out_dir``) replaced."""
        return dataclasses.replace(self, **changes)

    def with_values(self, changes: Mapping[str, Any]) -> TrainConfig:
        """A copy with fields set: dotted paths (``"optim.base_lr"``) or, for compatibility, the
        flat names of earlier versions (``"base_lr"``, ``"amp"``: see
        :mod:`~maskrcnn.train.config_compat`) -> already parsed values.

        Raises:
            ValueError: an unknown field (named), or a value the field does not accept.
        """
        per_section: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in changes.items():
            section, name, value = _field_of(key, value)
            if name is None:
                top[section] = value
            else:
                per_section.setdefault(section, {})[name] = value
        for section, values in per_section.items():
            top[section] = dataclasses.replace(getattr(self, section), **values)
        return dataclasses.replace(self, **top)

    def with_assignments(self, items: Iterable[str]) -> TrainConfig:
        """A copy with ``"field=value"`` strings applied (``--train-set``), all at once."""
        changes: dict[str, Any] = {}
        for item in items:
            key, value = parse_assignment(item, where="train setting")
            try:
                _field_of(key, value)
            except ValueError as err:
                raise ValueError(f"train setting {item!r}: {err}") from None
            changes[key] = value
        return self.with_values(changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable nested dict (tuples as lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ModelSpec):
                out[f.name] = value.to_dict()
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                out[f.name] = {k: listed(v) for k, v in dataclasses.asdict(value).items()}
            else:
                out[f.name] = value
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; also reads the flat layout of earlier versions.

        Raises:
            ValueError: unknown keys (named) or values a field does not accept.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"TrainConfig: expected a mapping, got {type(data).__name__}")
        if not any(isinstance(data.get(name), Mapping) for name in _SECTIONS):
            data = config_compat.sections_from_flat(data)
        allowed = [f.name for f in dataclasses.fields(TrainConfig)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; allowed: {allowed}")
        if "data" not in data:
            raise ValueError("TrainConfig: no data section (train_ann and train_images)")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            cls = _SECTIONS.get(name)
            if cls is ModelSpec:
                kwargs[name] = ModelSpec.from_dict(value)
            elif cls is not None:
                kwargs[name] = _section_from_dict(cls, name, value)
            else:
                kwargs[name] = value
        return TrainConfig(**kwargs)

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: dotted path -> (self's value, other's value)."""
        diff: dict[str, tuple[Any, Any]] = {}
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if not dataclasses.is_dataclass(mine):
                if mine != theirs:
                    diff[f.name] = (mine, theirs)
                continue
            for g in dataclasses.fields(mine):
                a, b = getattr(mine, g.name), getattr(theirs, g.name)
                if a != b:
                    diff[f"{f.name}.{g.name}"] = (a, b)
        return diff


def _field_of(key: str, value: Any) -> tuple[str, str | None, Any]:
    """``(section, field, value)`` of a dotted path or an old flat name (``("out_dir", None, v)``
    for the one top-level field); an unknown one raises a ``ValueError`` naming it."""
    path, value = config_compat.dotted(key, value)
    section, _, name = path.partition(".")
    if path == "out_dir":
        return "out_dir", None, value
    if section in _SECTIONS and name not in _field_names(_SECTIONS[section]):
        fields = [f.name for f in dataclasses.fields(_SECTIONS[section])]
        raise ValueError(f"unknown field {key!r} of TrainConfig; {section} has {fields}")
    if section not in _SECTIONS:
        raise ValueError(
            f"unknown field {key!r} of TrainConfig (use section.field, e.g. optim.base_lr; "
            f"sections: {list(_SECTIONS)})"
        )
    return section, name, value


def _section_from_dict(cls: type, name: str, data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"TrainConfig.{name}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - _field_names(cls))
    if unknown:
        allowed = [f.name for f in dataclasses.fields(cls)]
        raise ValueError(f"TrainConfig.{name}: unknown field(s) {unknown}; allowed: {allowed}")
    try:
        return cls(**{k: tupled(v) for k, v in data.items()})
    except TypeError as err:  # a required field is missing
        raise ValueError(f"TrainConfig.{name}: {err}") from err


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool; NaN and infinities are refused)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
