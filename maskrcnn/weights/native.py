"""Our own model files: weights in safetensors, the configuration inside its metadata.

One ``.safetensors`` file carries everything needed to rebuild the model (the configuration,
category names included, as JSON in the header), and loading it runs no pickled code. Files are
written atomically: a temporary file in the same folder, flushed, then renamed over the target.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from maskrcnn.config import ModelConfig
from maskrcnn.modeling import MaskRCNN, build_model

FORMAT = "maskrcnn/1"


def nonfinite_entries(tree: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in ``tree`` (nested dicts, lists, tuples of
    tensors and plain values) that hold a NaN or an infinity."""
    if torch.is_tensor(tree):
        bad = tree.is_floating_point() and not bool(torch.isfinite(tree).all())
        return [prefix or "<tensor>"] if bad else []
    items: Any = ()
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    names: list[str] = []
    for key, value in items:
        names.extend(nonfinite_entries(value, f"{prefix}.{key}" if prefix else str(key)))
    return names


def check_finite(tree: Any, *, what: str, path: str | Path) -> None:
    """Raises a ``ValueError`` naming ``path`` and the first non-finite tensors of ``tree``."""
    bad = nonfinite_entries(tree)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ValueError(
            f"refusing to write {path}: {what} holds non-finite values (NaN/inf) in {shown}"
        )


def save_model(model: MaskRCNN, path: str | Path) -> Path:
    """Writes ``model``'s weights and configuration to ``path`` (a .safetensors file).

    Raises:
        ValueError: a weight holds a NaN or an infinity (nothing is written).
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    check_finite(tensors, what="the model", path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "config": json.dumps(model.cfg.to_dict())}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_config(path: str | Path) -> ModelConfig:
    """The configuration stored in a model file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a safetensors file ({err})") from err
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise ValueError(f"{path}: not a maskrcnn model file (no {FORMAT!r} metadata)")
    try:
        return ModelConfig.from_dict(json.loads(metadata["config"]))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: bad configuration in metadata: {err}") from err


def check_tensors_fit(path: str | Path, cfg: ModelConfig) -> None:
    """Compares the tensor names and shapes in a model file's header with those ``cfg`` needs.

    The model is built on the ``meta`` device (no memory), so a configuration that asks for an
    absurd model (tens of GB of tensors) is refused here, before anything is allocated.

    Raises:
        ValueError: naming the file, the size the configuration asks for, and the tensors that
            are missing, unexpected or of another shape.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            in_file = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a safetensors file ({err})") from err
    try:
        with torch.device("meta"):
            needed = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"{path}: bad configuration in metadata: {err}") from err
    missing = [k for k in needed if k not in in_file]
    unexpected = [k for k in in_file if k not in needed]
    reshaped = [k for k in needed if k in in_file and in_file[k] != needed[k]]
    if not (missing or unexpected or reshaped):
        return
    gigabytes = sum(math.prod(shape) for shape in needed.values()) * 4 / 1e9
    parts = [f"{len(missing)} missing {missing[:3]}"] if missing else []
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected {unexpected[:3]}")
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape (e.g. {k}: {list(in_file[k])} in the file, "
            f"{list(needed[k])} for the configuration)"
        )
    raise ValueError(
        f"{path}: its tensors do not fit the configuration in its metadata (a model of "
        f"{gigabytes:.2f} GB in fp32; nothing was allocated): " + "; ".join(parts)
    )


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> MaskRCNN:
    """Rebuilds a model saved by :func:`save_model`, in eval mode.

    Raises:
        ValueError: not a model file, a bad configuration, or tensors that do not fit it
            (checked against the file's header before the model is built).
    """
    from maskrcnn.weights.torchvision import load_exact

    cfg = read_config(path)
    check_tensors_fit(path, cfg)
    model = build_model(cfg)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    load_exact(model, tensors, source=str(path))
    return model.to(device).eval()
