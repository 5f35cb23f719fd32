"""Which model to train: a preset name plus checked overrides of its fields.

A :class:`ModelSpec` holds parsed, validated overrides (dotted :class:`~maskrcnn.config.ModelConfig`
keys -> values of the field's type), never ``"key=value"`` strings: those are parsed at the
edge (the command line, :func:`maskrcnn.train.assignments.parse_assignments`). The dataset
decides ``num_classes`` and ``category_names``, so :meth:`ModelSpec.model_config` takes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from maskrcnn.config import PRESETS, ModelConfig, config_value, override, preset
from maskrcnn.train.assignments import listed, tupled

# Fields the dataset decides; an override of them is an error.
DATASET_FIELDS = ("num_classes", "category_names")

InitArchitecture = Literal["source", "preset"]
INIT_ARCHITECTURES = ("source", "preset")


@dataclass(frozen=True)
class ModelSpec:
    """A preset and overrides of its configuration.

    Attributes:
        preset: a :data:`maskrcnn.config.PRESETS` name.
        overrides: dotted key -> value, applied to the preset with
            :func:`maskrcnn.config.override`, e.g. ``{"input.min_size": (512,)}`` (a sequence
            of ``(key, value)`` pairs is accepted too; the field holds a new dict). Each value
            is checked against the preset's field (a lossless conversion, e.g. an int for a
            float field, is made; a mismatch is an error).
        imagenet: ImageNet backbone initialisation of a new run (a published name or a local
            file; None: random initialisation).
        init: a whole pretrained Mask R-CNN a new run starts from (a published name, our
            model file or training checkpoint, a torchvision or detectron2 file; see
            :mod:`maskrcnn.weights.finetune`). Its class rows are carried over by name.
        init_map: (data name, source name) pairs that map classes by hand (an empty source
            name: initialise that class fresh).
        init_arch: with ``init``, where the architecture comes from: ``"source"`` (the
            weights' own configuration, then ``overrides``) or ``"preset"`` (``preset``, then
            ``overrides``; the weights must fit it).
    """

    preset: str = "r50_fpn"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    imagenet: str | None = None
    init: str | None = None
    init_map: tuple[tuple[str, str], ...] = ()
    init_arch: InitArchitecture = "source"

    def __post_init__(self) -> None:
        if not isinstance(self.preset, str) or self.preset not in PRESETS:
            raise ValueError(
                f"TrainConfig.model.preset: unknown preset; choose one of {sorted(PRESETS)} "
                f"(got {self.preset!r})"
            )
        if self.imagenet is not None and not isinstance(self.imagenet, str):
            raise ValueError(
                f"TrainConfig.model.imagenet: must be a string or None (got {self.imagenet!r})"
            )
        object.__setattr__(self, "overrides", _checked_overrides(self.preset, self.overrides))
        _check_init(self)

    def __hash__(self) -> int:
        return hash(
            (
                self.preset,
                tuple(self.overrides.items()),
                self.imagenet,
                self.init,
                self.init_map,
                self.init_arch,
            )
        )

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with fields replaced (checked again)."""
        return dataclasses.replace(self, **changes)

    def model_config(
        self,
        num_classes: int = 91,
        category_names: tuple[str, ...] = (),
        *,
        base: ModelConfig | None = None,
    ) -> ModelConfig:
        """The preset (or ``base``: the ``init`` source's architecture) with the overrides
        applied and the dataset's classes set."""
        cfg = preset(self.preset, num_classes) if base is None else base
        for key, value in self.overrides.items():
            cfg = override(cfg, key, value)
        return cfg.replace(num_classes=num_classes, category_names=tuple(category_names))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form: ``{"preset", "overrides": {key: value}, "imagenet",
        "init", "init_map": [[data, source], ...], "init_arch"}``."""
        return {
            "preset": self.preset,
            "overrides": {key: listed(value) for key, value in self.overrides.items()},
            "imagenet": self.imagenet,
            "init": self.init,
            "init_map": [list(pair) for pair in self.init_map],
            "init_arch": self.init_arch,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``ValueError`` naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"TrainConfig.model: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(ModelSpec)})
        if unknown:
            raise ValueError(
                f"TrainConfig.model: unknown field(s) {unknown}; allowed: "
                "['preset', 'overrides', 'imagenet']"
            )
        return ModelSpec(**{k: tupled(v) for k, v in data.items()})


def _check_init(spec: ModelSpec) -> None:
    """Checks (and normalises) the ``init`` fields of ``spec``."""
    if spec.init is not None and not isinstance(spec.init, str):
        raise ValueError(f"TrainConfig.model.init: must be a string or None (got {spec.init!r})")
    if spec.init is not None and spec.imagenet is not None:
        raise ValueError(
            "TrainConfig.model: init and imagenet exclude each other (the init weights hold "
            f"the backbone already; got init={spec.init!r}, imagenet={spec.imagenet!r})"
        )
    if spec.init_arch not in INIT_ARCHITECTURES:
        raise ValueError(
            f"TrainConfig.model.init_arch: must be one of {list(INIT_ARCHITECTURES)} "
            f"(got {spec.init_arch!r})"
        )
    pairs: tuple[tuple[str, str], ...] = ()
    try:
        pairs = tuple((p[0], p[1]) for p in spec.init_map if len(p) == 2)
        ok = len(pairs) == len(spec.init_map) and all(
            isinstance(a, str) and isinstance(b, str) and a for a, b in pairs
        )
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            "TrainConfig.model.init_map: expected (data name, source name) pairs of strings "
            f"(got {spec.init_map!r})"
        )
    if spec.init_map and spec.init is None:
        raise ValueError("TrainConfig.model.init_map: needs init (the weights to map from)")
    object.__setattr__(spec, "init_map", pairs)


def _checked_overrides(name: str, overrides: Any) -> dict[str, Any]:
    pairs: list[tuple[Any, ...]] | None
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    else:
        try:
            pairs = [tuple(p) for p in overrides]
        except TypeError:
            pairs = None
        if pairs is None or any(len(p) != 2 or not isinstance(p[0], str) for p in pairs):
            raise ValueError(
                "TrainConfig.model.overrides: expected a mapping of dotted keys to values "
                f"(got {overrides!r})"
            )
    merged = dict(pairs)  # a repeated key: the last value wins
    base = preset(name)
    checked: dict[str, Any] = {}
    for key, value in merged.items():
        if key in DATASET_FIELDS:
            raise ValueError(f"model override {key!r}: {key} is set from the dataset")
        try:
            value = _coerced(_current(base, key), tupled(value))
            base = override(base, key, value)
        except ValueError as err:
            raise ValueError(f"model override {key!r}: {err}") from err
        checked[key] = value
    return checked


def _current(cfg: ModelConfig, key: str) -> Any:
    return config_value(cfg, key)


def _coerced(old: Any, new: Any) -> Any:
    """``new`` converted to ``old``'s type where that is lossless; a clear error otherwise."""
    if dataclasses.is_dataclass(old):
        raise ValueError("names a whole section; set its fields (e.g. key.field=...)")
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
