"""detectron2 Mask R-CNN checkpoints -> our model, configured to reproduce detectron2.

Model-zoo files are pickles, ``{"model": {name: ndarray}, "__author__": ...}`` or a bare
``{name: ndarray}``. Unpickling calls whatever the file names, so :class:`RestrictedUnpickler`
resolves only the globals that rebuild plain containers and numpy arrays, and refuses anything
else *before* it can be called.

detectron2's conventions become configuration (``maskrcnn.config.detectron2_config``): BGR
input on the 0-255 scale, stride in the 1x1 conv of each bottleneck, RoIAlign aligned=True
with adaptive sampling, unrounded anchors with nominal strides. Its ``cls_score`` has the
background *last* (K + 1 rows) and ``bbox_pred`` / the mask predictor have no background
rows (4K, K). Our label 0 is the background: our ``cls_score`` row 0 is its row K, our rows
1..K its rows 0..K-1, and our box / mask background rows are zeros (never read at
inference)."""

from __future__ import annotations

import codecs
import collections
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maskrcnn.config import detectron2_config
from maskrcnn.modeling import MaskRCNN, build_model
from maskrcnn.modeling.backbone import STAGE_BLOCKS
from maskrcnn.weights.torchvision import load_exact, read_state_dict

# ----------------------------------------------------------------------------------------------
# Restricted unpickling


def _sized(constructor: type) -> Callable[..., Any]:
    """``bytes`` (for protocol-2 ``bytes()``) without the ``bytes(10**12)`` allocation form."""

    def build(*args: Any) -> Any:
        if any(isinstance(a, int) for a in args):
            raise pickle.UnpicklingError(f"refused {constructor.__name__}() of a size")
        return constructor(*args)

    return build


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: latin-1 of a str only."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refused _codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> the object a pickle may reference. Nothing else resolves."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spellings
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        # protocol 5; numpy's stubs leave out this private helper
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
    plain = {"set": set, "frozenset": frozenset, "complex": complex, "bytes": _sized(bytes)}
    for builtins in ("builtins", "__builtin__"):  # Python 3 and Python 2 spellings
        for name, obj in plain.items():
            table[(builtins, name)] = obj
    return table


class RefusedGlobalError(ValueError):
    """A pickle named a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global.

    ``find_class`` runs when the pickle *names* a global (GLOBAL / STACK_GLOBAL opcodes),
    before anything can call it, so a refused name never executes. Persistent ids are
    refused by the base class (no ``persistent_load``).
    """

    def __init__(self, file: Any, *, source: str) -> None:
        super().__init__(file, encoding="latin1")  # as detectron2 reads Python 2 pickles
        self.source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``; anything else raises ``RefusedGlobalError``."""
        obj = self._allowed.get((module, name))
        if obj is None:
            raise RefusedGlobalError(
                f"{self.source}: refusing to unpickle global {module}.{name} (allowed: numpy "
                "arrays, plain containers)"
            )
        return obj


def load_detectron2_pkl(path: str | Path) -> dict[str, np.ndarray]:
    """The ``{name: ndarray}`` weights of a detectron2 ``.pkl``, read without running code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a refused global (naming it and the file), an unreadable pickle, the
            Detectron1 ``blobs`` layout, or anything that is not a mapping of numeric arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as handle:
        try:
            data = RestrictedUnpickler(handle, source=str(path)).load()
        except RefusedGlobalError:
            raise
        except Exception as err:  # noqa: BLE001 - corrupt pickles fail in many ways
            raise ValueError(f"{path}: not a readable weights pickle ({err!r})") from err
    if isinstance(data, Mapping) and "blobs" in data:
        raise ValueError(f"{path}: Detectron1 'blobs' checkpoints are not supported")
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{path}: expected {{'model': {{name: array}}}} or {{name: array}}")
    weights: dict[str, np.ndarray] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array")
        if value.dtype.kind not in "biuf":
            raise ValueError(f"{path}: array {key!r} has non-numeric dtype {value.dtype}")
        weights[key] = value
    return weights


def read_detectron2_weights(source: str | Path | Mapping[str, Any]) -> dict[str, Tensor]:
    """detectron2-named tensors from a ``.pkl`` (restricted), a ``.pth`` / ``.safetensors``
    (weights only, ``{"model": ...}`` unwrapped) or a mapping of arrays / tensors."""
    if isinstance(source, Mapping):
        raw: Mapping[str, Any] = source
    elif Path(source).suffix in (".pth", ".pt", ".safetensors"):
        raw = read_state_dict(source)
    else:
        raw = load_detectron2_pkl(source)
    out = {}
    for key, value in raw.items():
        if isinstance(value, np.ndarray):  # native byte order, writable copy
            value = torch.from_numpy(value.astype(value.dtype.newbyteorder("="), copy=True))
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------------
# Key mapping

_NORM = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"
_WB = r"(?P<p>weight|bias)"
_BU = "backbone.bottom_up."
_BLOCK = r"backbone\.bottom_up\.(?P<b>res[2-5]\.\d+\.(?:conv[1-3]|shortcut))"
_FPN = r"backbone\.fpn_(?P<k>lateral|output)(?P<lvl>[2-5])"
_RPN = r"proposal_generator\.rpn_head\."
_BOX, _MASK = r"roi_heads\.box_head\.", r"roi_heads\.mask_head\."

# (detectron2 pattern, our key) pairs. Named groups fill the template; ``one`` is a 1-based
# index (``fc1``, ``mask_fcn1``) and ``lvl`` an FPN level (2..5), both turned into our 0-based
# list index.
_RULES: list[tuple[str, str]] = [
    (r"backbone\.bottom_up\.stem\.conv1\.weight", _BU + "stem.conv1.conv.weight"),
    (rf"backbone\.bottom_up\.stem\.conv1\.norm\.{_NORM}", _BU + "stem.conv1.norm.{p}"),
    (rf"{_BLOCK}\.weight", _BU + "{b}.conv.weight"),
    (rf"{_BLOCK}\.norm\.{_NORM}", _BU + "{b}.norm.{p}"),
    (rf"{_FPN}\.{_WB}", "backbone.fpn.{k}_convs.{lvl}.conv.{p}"),
    (rf"{_FPN}\.norm\.{_NORM}", "backbone.fpn.{k}_convs.{lvl}.norm.{p}"),
    (rf"{_RPN}conv\.{_WB}", "rpn.head.convs.0.conv.{p}"),
    (rf"{_RPN}conv\.conv(?P<i>\d+)\.{_WB}", "rpn.head.convs.{i}.conv.{p}"),  # several convs
    (rf"{_RPN}(?P<k>objectness_logits|anchor_deltas)\.{_WB}", "rpn.head.{k}.{p}"),
    (rf"{_BOX}fc(?P<one>\d+)\.{_WB}", "roi_heads.box_head.fcs.{one}.{p}"),
    (rf"{_BOX}conv(?P<one>\d+)\.{_WB}", "roi_heads.box_head.convs.{one}.conv.{p}"),
    (rf"{_BOX}conv(?P<one>\d+)\.norm\.{_NORM}", "roi_heads.box_head.convs.{one}.norm.{p}"),
    (
        rf"roi_heads\.box_predictor\.(?P<k>cls_score|bbox_pred)\.{_WB}",
        "roi_heads.box_predictor.{k}.{p}",
    ),
    (rf"{_MASK}mask_fcn(?P<one>\d+)\.{_WB}", "roi_heads.mask_head.convs.{one}.conv.{p}"),
    (rf"{_MASK}mask_fcn(?P<one>\d+)\.norm\.{_NORM}", "roi_heads.mask_head.convs.{one}.norm.{p}"),
    (rf"{_MASK}(?P<k>deconv|predictor)\.{_WB}", "roi_heads.mask_head.{k}.{p}"),
]

# Buffers detectron2 may have saved that are not weights (input normalisation, anchors).
_NOT_WEIGHTS = re.compile(r"pixel_(mean|std)|proposal_generator\.anchor_generator\..*")


def detectron2_key(key: str) -> str | None:
    """Our state-dict key for a detectron2 R-FPN Mask R-CNN key (None: not one we know)."""
    for pattern, template in _RULES:
        match = re.fullmatch(pattern, key)
        if match:
            groups = match.groupdict()
            if "one" in groups:
                groups["one"] = str(int(groups["one"]) - 1)
            if "lvl" in groups:
                groups["lvl"] = str(int(groups["lvl"]) - 2)
            return template.format(**groups)
    return None


def convert_detectron2_state_dict(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Renames every key and moves the class rows to our layout (background first).

    Known non-weight buffers (``pixel_mean``, anchor buffers) are dropped; any other unknown
    key raises a ``ValueError`` naming it.
    """
    if any(k.startswith(("backbone.res", "backbone.stem.", "roi_heads.res5.")) for k in weights):
        raise ValueError("detectron2 C4 checkpoints are not supported (only R-FPN models)")
    if weights and not any("." in k for k in weights):
        raise ValueError(f"Caffe2-style names (e.g. {next(iter(weights))!r}) are not supported")
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in weights.items():
        if _NOT_WEIGHTS.fullmatch(key):
            continue
        new = detectron2_key(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"not detectron2 Mask R-CNN (R-FPN) keys: {unknown[:8]}")
    return _background_first(out)


def _background_first(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """detectron2's class rows (bg last in cls_score, absent elsewhere) -> ours (bg = 0)."""
    prefix, mask = "roi_heads.box_predictor.", "roi_heads.mask_head.predictor."
    needed = [f"{prefix}cls_score.weight", f"{prefix}bbox_pred.weight", f"{mask}weight"]
    missing = [k for k in needed if k not in sd]
    if missing:
        raise ValueError(f"detectron2 checkpoint lacks the predictors (ours: {missing})")
    k = sd[f"{prefix}cls_score.weight"].shape[0] - 1  # foreground classes
    box_rows = sd[f"{prefix}bbox_pred.weight"].shape[0]
    mask_rows = sd[f"{mask}weight"].shape[0]
    if box_rows != 4 * k:  # (4 rows: class-agnostic box regression, which we do not have)
        raise ValueError(f"bbox_pred has {box_rows} rows for {k} classes (need {4 * k})")
    if mask_rows not in (k, 1):
        raise ValueError(f"mask predictor has {mask_rows} channels for {k} classes")
    out = dict(sd)
    for name in ("weight", "bias"):
        key = f"{prefix}cls_score.{name}"
        if key in sd:
            out[key] = torch.cat([sd[key][k:], sd[key][:k]])
        key = f"{prefix}bbox_pred.{name}"
        if key in sd:
            out[key] = torch.cat([sd[key].new_zeros((4, *sd[key].shape[1:])), sd[key]])
        key = f"{mask}{name}"
        if key in sd and mask_rows == k:  # a class-agnostic mask head keeps its one channel
            out[key] = torch.cat([sd[key].new_zeros((1, *sd[key].shape[1:])), sd[key]])
    return out


def _infer_depth(sd: Mapping[str, Tensor]) -> int:
    """ResNet depth from the number of blocks per stage and the block kind."""
    blocks = []
    for stage in ("res2", "res3", "res4", "res5"):
        pattern = re.compile(rf"backbone\.bottom_up\.{stage}\.(\d+)\.")
        blocks.append(len({m[1] for k in sd if (m := pattern.match(k))}))
    bottleneck = any(".conv3." in k for k in sd if k.startswith(_BU))
    for depth, counts in STAGE_BLOCKS.items():
        if tuple(blocks) == counts and bottleneck == (depth >= 50):
            return depth
    raise ValueError(f"unrecognised ResNet: blocks per stage {blocks}")


# ----------------------------------------------------------------------------------------------
# Configuration and loading


def from_detectron2(
    path: str | Path | Mapping[str, Any],
    *,
    category_names: tuple[str, ...] = (),
    **overrides: Any,
) -> MaskRCNN:
    """Our model, in eval mode, holding a detectron2 R-FPN Mask R-CNN's weights.

    Args:
        path: a model-zoo ``.pkl`` (read with :class:`RestrictedUnpickler`), a detectron2
            ``.pth`` checkpoint (weights only), or a mapping of detectron2 names to arrays.
        category_names: label names (index = our label, 0 = background).
        **overrides: keyword arguments of :func:`maskrcnn.config.detectron2_config` (``min_size``,
            ``score_thresh``, ...). ``num_classes`` and ``depth`` are read from the weights.

    Raises:
        ValueError: unknown keys, a refused pickle global, or weights that do not fit.
    """
    source = "detectron2 weights" if isinstance(path, Mapping) else str(path)
    weights = read_detectron2_weights(path)
    try:
        state = convert_detectron2_state_dict(weights)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    inferred = {
        "num_classes": int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1,
        "depth": _infer_depth(state),
        "class_agnostic_mask": state["roi_heads.mask_head.predictor.weight"].shape[0] == 1,
    }
    for name, value in inferred.items():
        if name in overrides and overrides[name] != value:
            raise ValueError(f"{name}={overrides[name]!r} contradicts the weights ({value!r})")
        overrides[name] = value
    conv1 = state.get(_BU + "res2.0.conv1.conv.weight")
    conv2 = state.get(_BU + "res2.0.conv2.conv.weight")
    if conv1 is not None and conv2 is not None and conv2.shape[1] != conv1.shape[0]:
        raise ValueError("grouped-convolution (ResNeXt) detectron2 checkpoints are not supported")
    cfg = detectron2_config(category_names=tuple(category_names), **overrides)
    model = build_model(cfg)  # (FrozenBN drops any num_batches_tracked when loading)
    load_exact(model, state, source=f"detectron2 checkpoint {source}")
    return model.eval()
