"""COCO category ids <-> the model's contiguous labels.

COCO category ids may have gaps (COCO itself uses 80 ids out of 1..90) and may even start at
0. The model wants labels ``1..K`` with ``0`` for the background. Categories are ordered by
id, so label ``k`` is the ``k``-th smallest id, as detectron2 does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from maskrcnn.data.coco_names import BACKGROUND

# names annotation tools give a background placeholder category (labelme: ``_background_``)
BACKGROUND_NAMES = ("_background_", "background", "__background__")


def placeholder_backgrounds(
    categories: Iterable[Any], annotations: Iterable[Any]
) -> list[Mapping[str, Any]]:
    """Categories that only stand for the background: named as in :data:`BACKGROUND_NAMES`
    (any case) and used by no annotation.

    labelme's COCO export, for one, lists ``{"id": 0, "name": "_background_"}``. The model has
    its own background (label 0); such categories are left out of the trained classes.
    Malformed entries are ignored here (they are reported elsewhere).
    """
    used = {
        a.get("category_id")
        for a in annotations
        if isinstance(a, Mapping) and isinstance(a.get("category_id"), int)
    }
    return [
        c
        for c in categories
        if isinstance(c, Mapping)
        and isinstance(c.get("id"), int)
        and str(c.get("name", "")).strip().lower() in BACKGROUND_NAMES
        and c["id"] not in used
    ]


@dataclass(frozen=True)
class CategoryMap:
    """Bidirectional map between COCO category ids and contiguous labels 1..K.

    Attributes:
        category_ids: COCO id of label ``k`` at position ``k - 1``, strictly increasing.
        names: name of label ``k`` at position ``k - 1``.
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.category_ids) != len(self.names):
            raise ValueError(
                f"CategoryMap: {len(self.category_ids)} category_ids but {len(self.names)} names"
            )
        for cid in self.category_ids:
            if isinstance(cid, bool) or not isinstance(cid, int):
                raise ValueError(f"CategoryMap: category id {cid!r} is not an integer")
        for name in self.names:
            if not isinstance(name, str):
                raise ValueError(f"CategoryMap: category name {name!r} is not a string")
        if any(a >= b for a, b in zip(self.category_ids, self.category_ids[1:])):
            dupes = sorted({c for c in self.category_ids if self.category_ids.count(c) > 1})
            detail = f"duplicate ids {dupes}" if dupes else "ids not in increasing order"
            raise ValueError(f"CategoryMap: {detail}")

    @staticmethod
    def from_coco(
        categories: Iterable[Mapping[str, Any]], source: str = "categories"
    ) -> CategoryMap:
        """Builds the map from a COCO ``categories`` list (``id`` and ``name`` per entry).

        Args:
            categories: the entries, in any order.
            source: where they come from (e.g. the annotation file), used in error messages.
        """
        pairs: dict[int, str] = {}
        for i, cat in enumerate(categories):
            if not isinstance(cat, Mapping) or "id" not in cat:
                raise ValueError(f"{source}: categories[{i}] has no 'id'")
            cid, name = cat["id"], cat.get("name", str(cat["id"]))
            if isinstance(cid, bool) or not isinstance(cid, int):
                raise ValueError(f"{source}: categories[{i}] id {cid!r} is not an integer")
            if cid in pairs:
                raise ValueError(f"{source}: category id {cid} appears more than once")
            pairs[cid] = str(name)
        ids = tuple(sorted(pairs))
        return CategoryMap(category_ids=ids, names=tuple(pairs[c] for c in ids))

    @property
    def num_categories(self) -> int:
        """K, the number of object categories."""
        return len(self.category_ids)

    @property
    def num_classes(self) -> int:
        """K + 1: the model's ``num_classes`` (background included)."""
        return len(self.category_ids) + 1

    @property
    def names_by_label(self) -> tuple[str, ...]:
        """Name of each label, ``"__background__"`` at index 0 (``ModelConfig.category_names``)."""
        return (BACKGROUND, *self.names)

    def __contains__(self, category_id: object) -> bool:
        return category_id in self._label_of

    def label(self, category_id: int) -> int:
        """The contiguous label (1..K) of a COCO category id; unknown ids raise ``KeyError``."""
        try:
            return self._label_of[category_id]
        except KeyError:
            raise KeyError(
                f"unknown category id {category_id}; known ids are {list(self.category_ids)}"
            ) from None

    def category_id(self, label: int) -> int:
        """The COCO category id of a label (1..K); 0 (background) and others raise ``KeyError``."""
        if isinstance(label, bool) or not 1 <= int(label) <= len(self.category_ids):
            raise KeyError(f"label {label} has no category (valid: 1..{len(self.category_ids)})")
        return self.category_ids[int(label) - 1]

    def name(self, label: int) -> str:
        """Name of a label; 0 is ``"__background__"``."""
        return self.names_by_label[int(label)]

    @property
    def _label_of(self) -> dict[int, int]:
        cache = self.__dict__.get("_label_cache")
        if cache is None:
            cache = {cid: k + 1 for k, cid in enumerate(self.category_ids)}
            object.__setattr__(self, "_label_cache", cache)
        return cache

    def to_dict(self) -> dict[str, list[Any]]:
        """Plain JSON-serialisable form (for checkpoints)."""
        return {"category_ids": list(self.category_ids), "names": list(self.names)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> CategoryMap:
        """Inverse of :meth:`to_dict`; missing or unknown keys raise ``ValueError``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"CategoryMap: expected a mapping, got {type(data).__name__}")
        keys = set(data)
        if keys != {"category_ids", "names"}:
            raise ValueError(
                f"CategoryMap: expected keys ['category_ids', 'names'], got {sorted(keys)}"
            )
        return CategoryMap(category_ids=tuple(data["category_ids"]), names=tuple(data["names"]))
