"""COCO keypoint annotations: the category's keypoint names and skeleton, per-instance
``keypoints`` ([x, y, v] * K), and the left/right flip map.

COCO's format (``person_keypoints_*.json``): a category carries ``keypoints`` (K names) and
``skeleton`` (pairs of 1-based keypoint indices); each annotation carries ``keypoints``, a flat
list ``[x1, y1, v1, ..., xK, yK, vK]`` with v = 0 (not labelled, x = y = 0), 1 (labelled but
occluded) or 2 (labelled and visible), and ``num_keypoints`` (the count with v > 0).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from maskrcnn.config import KeypointHeadConfig
from maskrcnn.data.annotations import DatasetError

_SIDES = (("left", "right"), ("right", "left"))


def flip_map_from_names(names: tuple[str, ...] | list[str]) -> tuple[int, ...]:
    """For each keypoint, the index of its mirror image under a horizontal flip.

    ``left_*`` pairs with ``right_*`` (any case; the word ``left``/``right`` may sit anywhere,
    delimited by ``_``, ``-``, ``.``, a space or the ends); other keypoints map to themselves.

    Raises:
        ValueError: a left/right keypoint without its partner, or duplicate names.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"keypoint names must be distinct, got {names}")
    index = {n.lower(): i for i, n in enumerate(names)}
    flip = list(range(len(names)))
    for i, name in enumerate(names):
        for side, other in _SIDES:
            pattern = rf"(^|[_\-. ]){side}($|[_\-. ])"
            if re.search(pattern, name.lower()):
                partner = re.sub(pattern, rf"\g<1>{other}\g<2>", name.lower(), count=1)
                if partner not in index:
                    raise ValueError(
                        f"keypoint {name!r} has no {other} partner ({partner!r}) among {names}"
                    )
                flip[i] = index[partner]
                break
    return tuple(flip)


@dataclass(frozen=True)
class KeypointSpec:
    """The keypoints of a dataset: names, skeleton (0-based pairs) and the flip map."""

    names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("KeypointSpec: needs at least one keypoint name")
        for pair in self.skeleton:
            if len(pair) != 2 or not all(0 <= i < len(self.names) for i in pair):
                raise ValueError(
                    f"KeypointSpec: skeleton pair {pair!r} is not two keypoint indices in "
                    f"[0, {len(self.names)})"
                )
        flip_map_from_names(self.names)  # checks the left/right pairs

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def flip_map(self) -> tuple[int, ...]:
        return flip_map_from_names(self.names)

    @staticmethod
    def from_coco(categories: list[dict[str, Any]], *, source: str) -> KeypointSpec | None:
        """The keypoints of the categories that have them (None if none has).

        Every category with ``keypoints`` must have the same names; ``skeleton`` is COCO's
        1-based pairs.

        Raises:
            DatasetError: naming ``source`` and the category, for names that are not a list of
                strings, categories with different keypoints, or a bad skeleton.
        """
        spec: KeypointSpec | None = None
        for cat in categories:
            if not isinstance(cat, dict) or "keypoints" not in cat:
                continue
            where = f"{source}: category {cat.get('id')} ({cat.get('name')!r})"
            names = cat["keypoints"]
            if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
                raise DatasetError(f"{where}: 'keypoints' must be a non-empty list of names")
            skeleton = cat.get("skeleton", [])
            pairs_ok = isinstance(skeleton, list) and all(
                isinstance(p, list) and len(p) == 2 and all(_is_int(v) for v in p) for p in skeleton
            )
            if not pairs_ok:
                raise DatasetError(f"{where}: 'skeleton' must be a list of [i, j] pairs")
            try:
                found = KeypointSpec(
                    names=tuple(names), skeleton=tuple((a - 1, b - 1) for a, b in skeleton)
                )
            except ValueError as err:
                raise DatasetError(f"{where}: {err} (skeleton indices are 1-based)") from err
            if spec is not None and found.names != spec.names:
                raise DatasetError(
                    f"{where}: keypoints {list(found.names)} differ from another category's "
                    f"{list(spec.names)}; one keypoint set per dataset is supported"
                )
            spec = spec or found
        return spec


def keypoints_problem(ann: dict[str, Any], num_keypoints: int) -> str | None:
    """What is wrong with an annotation's ``keypoints`` field, or None (absent is fine)."""
    kps = ann.get("keypoints")
    if kps is None:
        return None
    if not isinstance(kps, list) or len(kps) != 3 * num_keypoints:
        size = len(kps) if isinstance(kps, list) else type(kps).__name__
        return f"keypoints must be a list of 3 x {num_keypoints} numbers, got {size}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in kps):
        return "keypoints must be numbers"
    if not all(math.isfinite(v) for v in kps):
        return "keypoints must be finite"
    if any(v not in (0, 1, 2) for v in kps[2::3]):
        return f"keypoint visibilities must be 0, 1 or 2, got {sorted(set(kps[2::3]))}"
    return None


def keypoints_array(ann: dict[str, Any], num_keypoints: int) -> np.ndarray:
    """[K, 3] float32 (x, y, v) of an annotation; all zeros (v = 0) when it has none.

    COCO pixel coordinates are used as they are (continuous, origin at the image's top-left
    corner), as torchvision's and detectron2's readers do.
    """
    kps = ann.get("keypoints")
    if kps is None:
        return np.zeros((num_keypoints, 3), dtype=np.float32)
    out = np.asarray(kps, dtype=np.float32).reshape(num_keypoints, 3)
    out[out[:, 2] == 0, :2] = 0.0  # unlabelled: no location
    return out


def count_visible(ann: dict[str, Any]) -> int:
    """The number of labelled keypoints (v > 0) of an annotation."""
    kps = ann.get("keypoints")
    if not isinstance(kps, list):
        return 0
    return sum(1 for v in kps[2::3] if v > 0)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def keypoint_head_config(
    spec: KeypointSpec, base: KeypointHeadConfig | None = None
) -> KeypointHeadConfig:
    """``base`` (default: :class:`~maskrcnn.config.KeypointHeadConfig`'s defaults) with the
    dataset's number of keypoints, names and skeleton: the head a keypoint dataset trains."""
    return dataclasses.replace(
        base or KeypointHeadConfig(num_keypoints=spec.num_keypoints),
        num_keypoints=spec.num_keypoints,
        keypoint_names=spec.names,
        skeleton=spec.skeleton,
    )
