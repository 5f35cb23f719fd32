"""The paper's Table 2 as data: CPU-sized stand-in models and one variant per row.

Each :class:`Variant` is a table row: which stand-in model (:data:`BACKBONES`), the model
overrides that make the row differ from that model's baseline, and the paper's figures
(arXiv 1703.06870, Table 2, COCO minival mask AP). Two rows with the same model and the
same overrides are the same training (2b's "sigmoid", 2c's "RoIAlign avg" and the
class-specific row of the class-agnostic comparison are all the C4 baseline), so they share
a run folder (:attr:`Variant.run_name`).

The stand-ins are the demo's ResNet-18 (trainable BatchNorm, from scratch, 128-channel heads)
sized for 128x128 images of small objects:

- ``c4`` for the paper's R50-C4: RPN and RoIs on res4 (stride 16) with the FPN design's box
  and mask heads (head "c4_fc"; the true C4 res5 RoI head costs ~10 s per step on one core);
- ``c5`` for 2d's R50-C5: RPN and RoIs on res5 alone (stride 32, no FPN), the FPN design's
  box head (2 fc) and 4-conv mask head;
- ``fpn`` for 2e's R50-FPN: the demo's ResNet-18-FPN.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from maskrcnn.demo import DEMO_MODEL_OVERRIDES

# The default data's image side (square images); the models' input size.
IMAGE_SIDE = 128


@dataclass(frozen=True)
class Backbone:
    """A CPU-sized stand-in for one of the paper's backbones.

    Attributes:
        name: short name used in run folders ("c4", "c5", "fpn").
        preset: the :data:`maskrcnn.config.PRESETS` name it starts from.
        overrides: model overrides applied to the preset (before a variant's own).
        stands_in_for: the paper's model it replaces.
        description: what it is, said in the output.
    """

    name: str
    preset: str
    overrides: Mapping[str, Any]
    stands_in_for: str
    description: str


# What every stand-in shares: the demo's slimmed ResNet-18 settings at 128x128 input.
_COMMON: dict[str, Any] = {
    **DEMO_MODEL_OVERRIDES,
    "backbone.depth": 18,
    "input.min_size": (IMAGE_SIDE,),
    "input.max_size": IMAGE_SIDE,
}
_SINGLE_LEVEL_ANCHORS = ((8.0, 16.0, 32.0, 64.0),)

BACKBONES: dict[str, Backbone] = {
    "c4": Backbone(
        name="c4",
        preset="r18_fpn",
        overrides={
            **{k: v for k, v in _COMMON.items() if not k.startswith("fpn.")},
            "head": "c4_fc",
            "anchors.sizes": _SINGLE_LEVEL_ANCHORS,
        },
        stands_in_for="R50-C4",
        description=(
            "ResNet-18 res4 from scratch (trainable BN): RPN and RoIs on res4 alone (stride 16), "
            "2-fc box head and 4-conv mask head, 28x28 masks; not the paper's res5 RoI head, "
            "which costs ~10 s per step on one core here"
        ),
    ),
    "c5": Backbone(
        name="c5",
        preset="r18_fpn",
        overrides={
            **{k: v for k, v in _COMMON.items() if not k.startswith("fpn.")},
            "head": "c5",
            "anchors.sizes": _SINGLE_LEVEL_ANCHORS,
        },
        stands_in_for="R50-C5 (stride 32)",
        description=(
            "ResNet-18-C5 from scratch (trainable BN): RPN and RoIs on res5 alone (stride 32, "
            "no FPN), 2-fc box head and 4-conv mask head, 28x28 masks"
        ),
    ),
    "fpn": Backbone(
        name="fpn",
        preset="r18_fpn",
        overrides={**_COMMON, "anchors.sizes": ((8.0,), (16.0,), (32.0,), (64.0,), (128.0,))},
        stands_in_for="R50-FPN",
        description=(
            "ResNet-18-FPN from scratch (trainable BN, 128-channel FPN): the demo's model, "
            "28x28 masks"
        ),
    ),
}


@dataclass(frozen=True)
class PaperFigures:
    """The paper's COCO minival mask AP of a row, in percent (None: not reported)."""

    ap: float
    ap50: float | None = None
    ap75: float | None = None


@dataclass(frozen=True)
class Variant:
    """One row of an ablation table.

    Attributes:
        table: the table it belongs to ("2b", "2c", "2d", "2e", "agnostic").
        label: the row's name, as in the paper.
        backbone: a :data:`BACKBONES` key.
        overrides: model overrides on top of the backbone's (what this row ablates).
        paper: the paper's figures.
    """

    table: str
    label: str
    backbone: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    paper: PaperFigures | None = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"Variant {self.label!r}: unknown backbone {self.backbone!r}; "
                f"choose one of {sorted(BACKBONES)}"
            )

    def __hash__(self) -> int:
        return hash((self.table, self.label, self.backbone, tuple(self.overrides.items())))

    @property
    def model_overrides(self) -> dict[str, Any]:
        """The backbone's overrides, then this row's."""
        return {**BACKBONES[self.backbone].overrides, **self.overrides}

    @property
    def preset(self) -> str:
        return BACKBONES[self.backbone].preset

    @property
    def run_name(self) -> str:
        """The run folder's name: the backbone and the overrides (rows with the same model
        share it), e.g. ``c4-baseline``, ``c4-pool``, ``c4-mask_head.loss=softmax``."""
        if not self.overrides:
            return f"{self.backbone}-baseline"
        values = {str(v) for v in self.overrides.values()}
        pooler_only = all(k.endswith("pooler.op") for k in self.overrides) and len(values) == 1
        if pooler_only:
            return f"{self.backbone}-{values.pop()}"
        parts = [f"{k}={v}" for k, v in sorted(self.overrides.items())]
        return f"{self.backbone}-" + re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))


def _op(op: str) -> dict[str, str]:
    """Both branches' RoI operator (the paper's 2c/2d rows change the box and mask pooling)."""
    return {"box_head.pooler.op": op, "mask_head.pooler.op": op}


TABLES: dict[str, tuple[Variant, ...]] = {
    "2b": (
        Variant(
            "2b", "softmax", "c4", {"mask_head.loss": "softmax"}, PaperFigures(24.8, 44.1, 25.1)
        ),
        Variant("2b", "sigmoid", "c4", {}, PaperFigures(30.3, 51.2, 31.5)),
    ),
    "2c": (
        Variant("2c", "RoIPool", "c4", _op("pool"), PaperFigures(26.9, 48.8, 26.4)),
        Variant("2c", "RoIWarp max", "c4", _op("warp_max"), PaperFigures(27.2, 49.2, 27.1)),
        Variant("2c", "RoIWarp avg", "c4", _op("warp"), PaperFigures(27.1, 48.9, 27.1)),
        Variant("2c", "RoIAlign max", "c4", _op("align_max"), PaperFigures(30.2, 51.0, 31.8)),
        Variant("2c", "RoIAlign avg", "c4", {}, PaperFigures(30.3, 51.2, 31.5)),
    ),
    "2d": (
        Variant("2d", "RoIPool", "c5", _op("pool"), PaperFigures(23.6, 46.5, 21.6)),
        Variant("2d", "RoIAlign", "c5", {}, PaperFigures(30.9, 51.8, 32.1)),
    ),
    "2e": (
        Variant(
            "2e",
            "MLP fc-fc-fc (1024, 1024, Kx28x28)",
            "fpn",
            {"mask_head.head_type": "mlp"},
            PaperFigures(31.5, 53.7, 32.8),
        ),
        Variant("2e", "FCN", "fpn", {}, PaperFigures(33.6, 55.2, 35.3)),
    ),
    "agnostic": (
        Variant(
            "agnostic",
            "class-agnostic masks",
            "c4",
            {"mask_head.class_agnostic": True},
            PaperFigures(29.7),
        ),
        Variant("agnostic", "class-specific masks", "c4", {}, PaperFigures(30.3, 51.2, 31.5)),
    ),
}

TABLE_TITLES: dict[str, str] = {
    "2b": "Table 2b: multinomial (softmax) vs independent (sigmoid) masks (R50-C4)",
    "2c": "Table 2c: RoI operators (R50-C4)",
    "2d": "Table 2d: RoIPool vs RoIAlign on stride-32 features (R50-C5)",
    "2e": "Table 2e: MLP vs FCN mask head (R50-FPN)",
    "agnostic": "Class-agnostic vs class-specific masks (R50-C4, the paper's text)",
}

TABLE_CHOICES = (*TABLES, "all")


def select_tables(names: list[str] | tuple[str, ...]) -> tuple[Variant, ...]:
    """The variants of the named tables ("all": every table), in table order."""
    unknown = [n for n in names if n not in TABLE_CHOICES]
    if unknown:
        raise ValueError(f"--table: unknown table(s) {unknown}; choose from {list(TABLE_CHOICES)}")
    chosen = list(TABLES) if "all" in names else [t for t in TABLES if t in names]
    return tuple(v for t in chosen for v in TABLES[t])
