"""``"key=value"`` strings of the command line (``--set``, ``--train-set``) as typed values.

The strings are parsed here, at the edge, once: the configuration objects only ever hold
parsed values (numbers, booleans, strings, tuples, mappings).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def parse_assignment(item: str, *, where: str = "setting") -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)``.

    The value is parsed as JSON when it parses (numbers, booleans, null, lists, objects) and
    kept as a string otherwise; JSON lists become tuples (the config dataclasses use tuples).

    Raises:
        ValueError: no ``=`` or an empty key (the message names ``where`` and the item).
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
    return key, tupled(value)


def parse_assignments(items: Iterable[str], *, where: str = "setting") -> dict[str, Any]:
    """Several ``"key=value"`` strings as one mapping (a repeated key: the last value wins)."""
    return dict(parse_assignment(item, where=where) for item in items)


def tupled(value: Any) -> Any:
    """JSON lists (at any depth) as tuples; mappings keep their keys and tuple their values."""
    if isinstance(value, (list, tuple)):
        return tuple(tupled(v) for v in value)
    if isinstance(value, dict):
        return {k: tupled(v) for k, v in value.items()}
    return value


def listed(value: Any) -> Any:
    """The inverse of :func:`tupled` for JSON: tuples (at any depth) as lists."""
    if isinstance(value, (list, tuple)):
        return [listed(v) for v in value]
    if isinstance(value, dict):
        return {k: listed(v) for k, v in value.items()}
    return value
