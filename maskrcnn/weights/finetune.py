"""Start a model from a pretrained Mask R-CNN with other classes: rows carried over by name.

:func:`read_init_source` reads any supported source into our layout (tensors with our names,
background first), with the architecture it implies and the names of its classes:

* our ``.safetensors`` model files (configuration and names in the header),
* our training checkpoints (``last.ckpt``, ``iter_*.ckpt``: ``model_config`` inside),
* torchvision Mask R-CNN state dicts (``.pth``, v1 or v2; the COCO names for 91 classes),
* detectron2 ``.pkl`` / ``.pth`` (the COCO names for 80 + 1 classes),
* a published name (:data:`maskrcnn.weights.pretrained.MODEL_NAMES`, downloaded through
  torch.hub's cache).

:func:`carry_over` then fills a freshly built model's state (its normal, seeded
initialisation) from the source: every tensor that does not depend on the classes is copied
exactly (its name and shape must match: a mismatch is an error naming the tensor and both
shapes); the class-dependent tensors (``cls_score``, ``bbox_pred``, the mask predictor) keep
the new model's shape, and each of their rows whose class has a source class of the same name
(case- and separator-insensitive, or mapped by hand) is copied from that source row, the
background too. The :class:`InitReport` says what was loaded, carried over and left fresh.
This is what the Mask R-CNN paper did to start Cityscapes from COCO (its appendix).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from maskrcnn.config import ModelConfig, detectron2_config
from maskrcnn.data.coco_names import BACKGROUND, COCO_81_NAMES, COCO_91_NAMES, UNUSED
from maskrcnn.modeling.layers import FrozenBatchNorm2d

CLS_SCORE = "roi_heads.box_predictor.cls_score."
BBOX_PRED = "roi_heads.box_predictor.bbox_pred."
MASK_PREDICTOR = "roi_heads.mask_head.predictor."
_SEPARATORS = re.compile(r"[\s_\-./]+")


@dataclass(frozen=True)
class InitSource:
    """Pretrained weights in our layout.

    Attributes:
        state: our state-dict names -> tensors (class rows background first).
        config: the architecture the weights imply (its ``num_classes`` is the source's).
        category_names: the source's name of each label (index 0: background; ``""`` or
            ``"N/A"``: a label without a name, never matched).
        description: what was read (for messages and the report).
    """

    state: dict[str, Tensor]
    config: ModelConfig
    category_names: tuple[str, ...]
    description: str


def normalise_name(name: str) -> str:
    """The matching key of a category name: lower case, spaces / ``_`` / ``-`` / ``.`` /
    ``/`` removed (``"Traffic_Light"`` and ``"traffic light"`` match)."""
    return _SEPARATORS.sub("", name.strip().lower())


# ----------------------------------------------------------------------------------------------
# Reading sources


def read_init_source(name_or_path: str | Path) -> InitSource:
    """Reads a pretrained Mask R-CNN of any supported kind (see the module docstring).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an unknown name or a file of an unrecognised kind.
        WeightsUnavailableError: a published model that cannot be downloaded.
    """
    from maskrcnn.weights import pretrained as pre
    from maskrcnn.weights.detectron2 import read_detectron2_weights
    from maskrcnn.weights.torchvision import read_state_dict

    name = str(name_or_path)
    if name in pre.PUBLISHED:
        published = pre.PUBLISHED[name]
        if published.kind == "imagenet":
            raise ValueError(
                f"--init {name!r} is an ImageNet backbone, not a detector; use --imagenet {name}"
            )
        variant = "v1" if published.kind == "torchvision_v1" else "v2"
        return _torchvision_source(pre.fetch_state_dict(name), variant, name, published=True)
    path = Path(name_or_path)
    if path.is_dir() and (path / "last.ckpt").is_file():  # a run folder
        path = path / "last.ckpt"
    if not path.is_file():
        if path.suffix in (".pth", ".pt", ".pkl", ".safetensors", ".ckpt") or len(path.parts) > 1:
            raise FileNotFoundError(f"--init: weights file not found: {path}")
        raise ValueError(
            f"--init: unknown model {name!r}; choose one of {list(pre.MODEL_NAMES)} or a path"
        )
    where = str(path)
    if path.suffix == ".safetensors" and pre._is_native(path):
        return _native_source(path)
    if path.suffix == ".pkl":
        return _detectron2_source(read_detectron2_weights(path), where)
    raw = _torch_load(path) if path.suffix not in (".safetensors",) else read_state_dict(path)
    if isinstance(raw, Mapping) and str(raw.get("format", "")).startswith("maskrcnn-train/"):
        return _checkpoint_source(raw, where)
    state = read_state_dict(dict(raw["model"]) if _wrapped(raw) else dict(raw))
    keys = set(state)
    if any(k.startswith("backbone.body.") for k in keys):
        variant = "v2" if any(k.startswith("roi_heads.box_head.0.") for k in keys) else "v1"
        return _torchvision_source(state, variant, where, published=False)
    if "backbone.bottom_up.stem.conv1.weight" in keys or any(
        k.startswith("proposal_generator.") for k in keys
    ):
        return _detectron2_source(read_detectron2_weights(state), where)
    if "backbone.bottom_up.stem.conv1.conv.weight" in keys:
        raise ValueError(
            f"{where}: a bare state dict of this package's model, without its configuration; "
            "use a .safetensors model file or a training checkpoint"
        )
    raise ValueError(f"{where}: not a recognised Mask R-CNN checkpoint (keys {sorted(keys)[:5]})")


def _wrapped(raw: Any) -> bool:
    return isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler's refusals have many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path}: not a weights-only torch checkpoint ({first})") from err


def _native_source(path: Path) -> InitSource:
    from safetensors.torch import load_file

    from maskrcnn.weights.native import check_tensors_fit, read_config

    cfg = read_config(path)
    check_tensors_fit(path, cfg)
    names = _names_or_blank(cfg.category_names, cfg.num_classes)
    return InitSource(load_file(str(path)), cfg, names, f"model file {path}")


def _checkpoint_source(raw: Mapping[str, Any], where: str) -> InitSource:
    if not isinstance(raw.get("model"), Mapping) or not isinstance(raw.get("model_config"), dict):
        raise ValueError(f"{where}: a training checkpoint without 'model' and 'model_config'")
    try:
        cfg = ModelConfig.from_dict(raw["model_config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: bad model configuration: {err}") from err
    names = _names_or_blank(cfg.category_names, cfg.num_classes)
    step = raw.get("iteration")
    return InitSource(dict(raw["model"]), cfg, names, f"training checkpoint {where} (step {step})")


def _torchvision_source(
    state: Mapping[str, Tensor], variant: str, where: str, *, published: bool
) -> InitSource:
    from maskrcnn.weights.torchvision import (
        convert_torchvision_state_dict,
        infer_norm_eps,
        torchvision_config,
    )

    ours = convert_torchvision_state_dict(state)
    rows = ours.get(CLS_SCORE + "weight")
    if rows is None:
        raise ValueError(f"{where}: not a whole torchvision Mask R-CNN checkpoint (no cls_score)")
    num_classes = int(rows.shape[0])
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if variant == "v1":
        kwargs["norm_eps"] = 0.0 if published else infer_norm_eps(state)
    cfg = torchvision_config("v1" if variant == "v1" else "v2", **kwargs)
    names = COCO_91_NAMES if num_classes == len(COCO_91_NAMES) else ("",) * num_classes
    cfg = cfg.replace(category_names=tuple(names))
    return InitSource(ours, cfg, tuple(names), f"torchvision {variant} weights {where}")


def _detectron2_source(weights: Mapping[str, Tensor], where: str) -> InitSource:
    from maskrcnn.weights.detectron2 import _infer_depth, convert_detectron2_state_dict

    try:
        ours = convert_detectron2_state_dict(weights)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    num_classes = int(ours[CLS_SCORE + "weight"].shape[0])
    names = COCO_81_NAMES if num_classes == len(COCO_81_NAMES) else ("",) * num_classes
    cfg = detectron2_config(
        num_classes - 1,
        depth=_infer_depth(ours),  # type: ignore[arg-type]
        class_agnostic_mask=ours[MASK_PREDICTOR + "weight"].shape[0] == 1,
        category_names=tuple(names),
    )
    return InitSource(ours, cfg, tuple(names), f"detectron2 weights {where}")


def _names_or_blank(names: Sequence[str], num_classes: int) -> tuple[str, ...]:
    return tuple(names) if len(names) == num_classes else ("",) * num_classes


# ----------------------------------------------------------------------------------------------
# Matching classes by name


def match_classes(
    target_names: Sequence[str],
    source_names: Sequence[str],
    name_map: Mapping[str, str] | None = None,
) -> dict[int, tuple[int, str]]:
    """Which source label each target label's rows come from.

    Args:
        target_names: the new model's name per label (index 0: background).
        source_names: the source's name per label (index 0: background; ``""`` and ``"N/A"``
            never match).
        name_map: target name -> source name, by hand; it wins over matching by name, and an
            empty source name means "initialise this class fresh".

    Returns:
        target label -> (source label, how: ``"background"``, ``"name"`` or ``"map"``).
        Labels missing from it start fresh.

    Raises:
        ValueError: a map entry naming an unknown category, or a name that matches several
            source categories.
    """
    unnamed = {"", normalise_name(UNUSED), normalise_name(BACKGROUND)}
    by_key: dict[str, list[int]] = {}
    for s, name in enumerate(source_names):
        key = normalise_name(name)
        if s > 0 and key not in unnamed:
            by_key.setdefault(key, []).append(s)
    target_keys = {normalise_name(n): t for t, n in enumerate(target_names) if t > 0}
    result: dict[int, tuple[int, str]] = {0: (0, "background")}
    manual: dict[int, str] = {}
    for data_name, source_name in (name_map or {}).items():
        t = target_keys.get(normalise_name(data_name))
        if t is None:
            raise ValueError(
                f"--init-map {data_name}={source_name}: {data_name!r} is not a category of the "
                f"data; its categories are {list(target_names[1:])}"
            )
        manual[t] = source_name
    for t in range(1, len(target_names)):
        how = "map" if t in manual else "name"
        wanted = manual.get(t, target_names[t])
        key = normalise_name(wanted)
        if how == "map" and key == "":
            continue  # fresh by hand
        found = by_key.get(key, [])
        if how == "map" and not found:
            known = [n for n in source_names[1:] if normalise_name(n) not in unnamed]
            raise ValueError(
                f"--init-map {target_names[t]}={wanted}: the source has no category "
                f"{wanted!r}; its categories are {known[:100]}"
            )
        if len(found) > 1:
            raise ValueError(
                f"category {target_names[t]!r} matches several source categories "
                f"{[source_names[s] for s in found]}; choose one with --init-map"
            )
        if found:
            result[t] = (found[0], how)
    return result


# ----------------------------------------------------------------------------------------------
# Carrying weights over


@dataclass
class InitReport:
    """What :func:`carry_over` did.

    Attributes:
        source: what was read.
        loaded: tensors copied exactly.
        class_tensors: class-dependent tensors (rebuilt for the new classes).
        carried: (data name, source name, how) of each class whose rows were copied.
        fresh_classes: data names of the classes whose rows start fresh.
        fresh_tensors: tensors of the new model the source lacks (kept at their fresh value,
            e.g. ``num_batches_tracked`` of a BatchNorm over FrozenBN weights).
        dropped: source tensors the new model has no place for (FrozenBN's
            ``num_batches_tracked``).
        notes: other facts worth printing (the norm choice).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    class_tensors: list[str] = field(default_factory=list)
    carried: list[tuple[str, str, str]] = field(default_factory=list)
    fresh_classes: list[str] = field(default_factory=list)
    fresh_tensors: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The report as a plain-text table (printed before the first step)."""
        carried = ", ".join(
            f"{d} <- {s}" + (" (by --init-map)" if how == "map" else "")
            for d, s, how in self.carried
        )
        rows = [
            ("tensors loaded exactly", str(len(self.loaded))),
            ("class-dependent tensors rebuilt", ", ".join(self.class_tensors) or "-"),
            ("rows carried over by name", carried or "-"),
            ("rows initialised fresh", ", ".join(self.fresh_classes) or "-"),
            ("tensors initialised fresh", ", ".join(self.fresh_tensors) or "-"),
            ("source tensors not used", ", ".join(self.dropped) or "-"),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"initialised from {self.source}"]
        lines += [f"  {a:<{width}}  {b}" for a, b in rows]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form."""
        return {
            "source": self.source,
            "loaded": self.loaded,
            "class_tensors": self.class_tensors,
            "carried": [{"data": d, "source": s, "how": h} for d, s, h in self.carried],
            "fresh_classes": self.fresh_classes,
            "fresh_tensors": self.fresh_tensors,
            "dropped": self.dropped,
            "notes": self.notes,
        }

    def write(self, run_dir: str | Path) -> Path:
        """Writes ``init_report.txt`` and ``init_report.json`` into ``run_dir``."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "init_report.json").write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        path = run_dir / "init_report.txt"
        path.write_text(self.table())
        return path


def class_rows(key: str, state_shape: Sequence[int], num_classes: int) -> int | None:
    """Rows per class of a class-dependent tensor (``cls_score``: 1, ``bbox_pred``: 4, mask
    predictor: 1 for an FCN, ``h*w`` for the MLP), or None for a tensor that does not depend on
    the classes (a class-agnostic mask predictor included)."""
    if not key.startswith((CLS_SCORE, BBOX_PRED, MASK_PREDICTOR)):
        return None
    rows = int(state_shape[0])
    if rows % num_classes or (key.startswith(MASK_PREDICTOR) and rows == 1 and num_classes > 1):
        return None
    return rows // num_classes


def carry_over(
    fresh: Mapping[str, Tensor],
    source: InitSource,
    *,
    target_names: Sequence[str],
    name_map: Mapping[str, str] | None = None,
    frozen_bn: Sequence[str] = (),
) -> tuple[dict[str, Tensor], InitReport]:
    """The state to load into a new model, and what was done.

    Args:
        fresh: the new model's ``state_dict`` (its normal, seeded initialisation).
        source: the pretrained weights.
        target_names: the new model's name per label (index 0: background).
        name_map: target name -> source name by hand (see :func:`match_classes`).
        frozen_bn: prefixes of the new model's FrozenBN modules (``a.b.norm.``): a source
            ``num_batches_tracked`` under them is dropped, as FrozenBN keeps none.

    Raises:
        ValueError: a tensor the source lacks or the new model lacks, or one of another
            shape: the message names the tensor and both shapes.
    """
    num_target, num_source = len(target_names), int(source.config.num_classes)
    matches = match_classes(target_names, source.category_names, name_map)
    report = InitReport(source=source.description)
    for t in range(1, num_target):
        if t in matches:
            s, how = matches[t]
            report.carried.append((target_names[t], source.category_names[s], how))
        else:
            report.fresh_classes.append(target_names[t])
    out: dict[str, Tensor] = {}
    missing, problems = [], []
    for key, mine in fresh.items():
        theirs = source.state.get(key)
        per_class = class_rows(key, mine.shape, num_target)
        if theirs is None:
            if key.endswith("num_batches_tracked"):
                out[key] = mine.clone()
                report.fresh_tensors.append(key)
            else:
                missing.append(key)
            continue
        src_per_class = class_rows(key, theirs.shape, num_source)
        if per_class is not None and src_per_class == per_class:
            if tuple(theirs.shape[1:]) != tuple(mine.shape[1:]):
                problems.append(_shapes(key, theirs, mine))
                continue
            rows = mine.detach().clone()
            for t, (s, _) in matches.items():
                rows[t * per_class : (t + 1) * per_class] = theirs[
                    s * per_class : (s + 1) * per_class
                ].to(rows.dtype)
            out[key] = rows
            report.class_tensors.append(key)
            continue
        if tuple(theirs.shape) != tuple(mine.shape):
            problems.append(_shapes(key, theirs, mine))
            continue
        out[key] = theirs.detach().to(mine.dtype).clone()
        report.loaded.append(key)
    unexpected = [k for k in source.state if k not in fresh]
    dropped = [
        k
        for k in unexpected
        if k.endswith("num_batches_tracked") and k.rsplit(".", 1)[0] + "." in set(frozen_bn)
    ]
    unexpected = [k for k in unexpected if k not in dropped]
    report.dropped = dropped
    if problems or missing or unexpected:
        parts = []
        if problems:
            parts.append(f"{len(problems)} of another shape: " + "; ".join(problems[:4]))
        if missing:
            parts.append(f"{len(missing)} missing from the source {missing[:6]}")
        if unexpected:
            parts.append(f"{len(unexpected)} the model has no place for {unexpected[:6]}")
        raise ValueError(
            f"{source.description} does not fit the model's configuration (a --preset or "
            "--set value contradicts the weights?): " + "; ".join(parts)
        )
    return out, report


def _shapes(key: str, theirs: Tensor, mine: Tensor) -> str:
    return f"{key}: {list(theirs.shape)} in the source, {list(mine.shape)} for the configuration"


def frozen_bn_prefixes(model: torch.nn.Module) -> list[str]:
    """``name.`` of every FrozenBN module of ``model``."""
    return [f"{n}." for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]


def init_from_source(
    model: torch.nn.Module,
    source: InitSource,
    *,
    target_names: Sequence[str],
    name_map: Mapping[str, str] | None = None,
) -> InitReport:
    """Fills a freshly built ``model`` from ``source`` (see :func:`carry_over`); returns the
    report. Nothing is loaded when the weights do not fit."""
    state, report = carry_over(
        model.state_dict(),
        source,
        target_names=target_names,
        name_map=name_map,
        frozen_bn=frozen_bn_prefixes(model),
    )
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    return report
