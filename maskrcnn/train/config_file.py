"""Training configuration files: YAML, TOML or JSON, whole or partial.

A file holds the sectioned layout of :meth:`TrainConfig.to_dict` (``data``, ``model``,
``optim``, ``schedule``, ``checkpoint``, ``eval``, ``log``, ``runtime`` and ``out_dir``), any
part of it: the fields it leaves out keep their values from below (the defaults, a recipe,
a resumed run's checkpoint). ``train_config.json``, which every run folder holds, is such a
file, also in the flat layout of earlier versions. The format follows the suffix:
``.yaml``/``.yml``, ``.toml`` or ``.json``.

:func:`dump_config` writes the YAML that ``maskrcnn train --print-config`` prints; read back,
it gives the identical :class:`TrainConfig`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from maskrcnn.train import config_compat
from maskrcnn.train.assignments import listed
from maskrcnn.train.config import SECTIONS, TrainConfig

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a configuration file holds, in the sectioned layout.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown suffix, a syntax error, or not a mapping of known sections
            (the message names the file and what is wrong).
    """
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: unknown configuration format {path.suffix!r}; use one of {list(FORMATS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"configuration file not found: {path}")
    text = path.read_text()
    try:
        if kind == "yaml":
            data = yaml.safe_load(text)
        elif kind == "toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid {kind.upper()}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    if data and not any(isinstance(data.get(name), Mapping) for name in SECTIONS):
        try:
            data = config_compat.sections_from_flat(data)  # an old flat train_config.json
        except ValueError as err:
            raise ValueError(f"{path}: {err}; sections: {list(SECTIONS)}") from None
    unknown = sorted(set(data) - {*SECTIONS, "out_dir"})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; allowed: {[*SECTIONS, 'out_dir']}")
    for name, value in data.items():
        if name != "out_dir" and not isinstance(value, Mapping):
            raise ValueError(f"{path}: section {name!r} must be a mapping of fields, got {value!r}")
    return dict(data)


def merged(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Configuration mappings merged in order, later ones winning field by field (mappings,
    e.g. a section or ``model.overrides``, are merged key by key)."""
    out: dict[str, Any] = {}
    for layer in layers:
        out = _merge(out, layer)
    return out


def _merge(below: Mapping[str, Any], above: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(below)
    for key, value in above.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _Dumper(yaml.SafeDumper):
    """Mappings as blocks, lists (of numbers, strings or lists) on one line."""


def _flow_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _flow_list)


def to_yaml(data: Mapping[str, Any]) -> str:
    """Plain containers as YAML, in their order (what :func:`read_config_file` reads)."""
    plain = listed(dict(data))
    return yaml.dump(plain, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def dump_config(cfg: TrainConfig) -> str:
    """``cfg`` as YAML (every field, in the sectioned layout); :func:`read_config_file` and
    :meth:`TrainConfig.from_dict` read it back to the same configuration."""
    header = "# maskrcnn training configuration: maskrcnn train --config FILE\n"
    return header + to_yaml(cfg.to_dict())
