"""A synthetic instance segmentation dataset written as real COCO files: coloured shapes.

Four classes with non-contiguous COCO ids (circle 1, square 3, triangle 7, star 11) on
textured backgrounds (noise, gradients, stripes, checkerboards). Objects range from ~10 px
to about half the short side; same-class objects overlap and touch (so telling instances
apart is part of the task); some images have no object. Some images are portrait.

Every object is a polygon rasterised by pycocotools, and the image is painted with exactly
those masks, so annotations are pixel-exact: unoccluded objects are stored as polygons or
compressed RLE, occluded ones (visible part only) as compressed or uncompressed RLE.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data.annotations import decode_mask, encode_binary_mask

SHAPE_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "circle"),
    (3, "square"),
    (7, "triangle"),
    (11, "star"),
)

# Every shape the generator can draw: name -> COCO category id. ``classes=`` picks a subset
# (a second task for fine-tuning experiments: some names shared with the default set).
SHAPE_CATALOGUE: dict[str, int] = {
    "circle": 1,
    "square": 3,
    "triangle": 7,
    "star": 11,
    "hexagon": 13,
    "cross": 17,
    "pentagon": 19,
}
COLOUR_STYLES = ("vivid", "pastel")

_MIN_VISIBLE_FRACTION = 0.3  # an object hidden more than this is removed from the scene
_MIN_VISIBLE_PIXELS = 12


@dataclass(frozen=True)
class ShapesFiles:
    """Where :func:`write_shapes_dataset` put things."""

    train_ann: Path
    val_ann: Path
    image_dir: Path


@dataclass
class _Shape:
    category_id: int
    polygon: list[float]  # flat [x0, y0, x1, y1, ...] in pixels
    colour: np.ndarray  # [3] RGB in [0, 255]
    mask: np.ndarray  # [H, W] bool, pycocotools' rasterisation of ``polygon``


def write_shapes_dataset(
    out: str | Path,
    *,
    train: int,
    val: int,
    seed: int,
    image_size: tuple[int, int] = (192, 256),
    classes: tuple[str, ...] | None = None,
    colours: str = "vivid",
) -> ShapesFiles:
    """Writes ``out/train.json``, ``out/val.json`` and ``out/images/*.png``.

    Args:
        out: output folder (created).
        train, val: number of images per split.
        seed: the same seed writes the same files.
        image_size: (h, w) of landscape images; about one image in five is transposed.
        classes: names from :data:`SHAPE_CATALOGUE` (None: the four default classes).
        colours: "vivid" (saturated, the default) or "pastel" (pale, low-saturation objects).
    """
    categories = _chosen_categories(classes)
    if colours not in COLOUR_STYLES:
        raise ValueError(f"colours must be one of {list(COLOUR_STYLES)}, got {colours!r}")
    if train < 0 or val < 0:
        raise ValueError(f"image counts must be >= 0, got train={train}, val={val}")
    h, w = image_size
    if min(h, w) < 32:
        raise ValueError(f"image_size must be at least 32x32, got {image_size}")
    out = Path(out)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    files = ShapesFiles(out / "train.json", out / "val.json", image_dir)
    for split_index, (split, count, ann_file) in enumerate(
        [("train", train, files.train_ann), ("val", val, files.val_ann)]
    ):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_index]))
        coco = _write_split(split, count, image_size, image_dir, rng, categories, colours)
        ann_file.write_text(json.dumps(coco))
    return files


def _chosen_categories(classes: tuple[str, ...] | None) -> tuple[tuple[int, str], ...]:
    """(id, name) of the chosen classes, in id order; unknown names raise a ``ValueError``."""
    if classes is None:
        return SHAPE_CATEGORIES
    unknown = [c for c in classes if c not in SHAPE_CATALOGUE]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(
            f"classes must be distinct names from {list(SHAPE_CATALOGUE)}, got {list(classes)}"
        )
    return tuple(sorted((SHAPE_CATALOGUE[c], c) for c in classes))


def _write_split(
    split: str,
    count: int,
    size: tuple[int, int],
    image_dir: Path,
    rng: np.random.Generator,
    chosen: tuple[tuple[int, str], ...] = SHAPE_CATEGORIES,
    colours: str = "vivid",
) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(count):
        h, w = size if rng.random() >= 0.2 else size[::-1]
        file_name = f"{split}_{i:05d}.png"
        pixels, shapes, visible = _render(h, w, rng, chosen, colours)
        Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for shape, mask in zip(shapes, visible):
            rle = encode_binary_mask(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": shape.category_id,
                    "segmentation": _segmentation(shape, mask, rle, rng),
                    "area": int(mask.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": n, "supercategory": "shape"} for c, n in chosen]
    return {
        "info": {"description": f"synthetic shapes ({split})"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _segmentation(
    shape: _Shape, visible: np.ndarray, rle: dict[str, Any], rng: np.random.Generator
) -> list[list[float]] | dict[str, Any]:
    if np.array_equal(visible, shape.mask) and rng.random() < 0.7:
        return [[round(v, 2) for v in shape.polygon]]
    if rng.random() < 0.25:
        return {"size": list(visible.shape), "counts": _uncompressed_counts(visible)}
    return {"size": list(visible.shape), "counts": rle["counts"]}


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE: run lengths in column-major order, starting with a 0-run."""
    flat = np.asfortranarray(mask).ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    return ([0] + counts) if flat[0] else counts


def _render(
    h: int,
    w: int,
    rng: np.random.Generator,
    chosen: tuple[tuple[int, str], ...] = SHAPE_CATEGORIES,
    colours: str = "vivid",
) -> tuple[np.ndarray, list[_Shape], list[np.ndarray]]:
    """An image [H, W, 3] uint8, its objects, and each object's visible mask."""
    pixels = _background(h, w, rng)
    shapes: list[_Shape] = []
    count = 0 if rng.random() < 0.1 else int(rng.integers(1, 9))
    for _ in range(count):
        if shapes and rng.random() < 0.35:  # a same-class neighbour touching or overlapping
            shapes.append(_neighbour(shapes[int(rng.integers(len(shapes)))], h, w, rng, colours))
        else:
            shapes.append(_random_shape(h, w, rng, chosen, colours))
    while True:  # drop mostly hidden objects until every remaining one is visible enough
        visible = _visible_masks(shapes)
        keep = [
            v.sum() >= max(_MIN_VISIBLE_PIXELS, _MIN_VISIBLE_FRACTION * s.mask.sum())
            for s, v in zip(shapes, visible)
        ]
        if all(keep):
            break
        shapes = [s for s, k in zip(shapes, keep) if k]
    for shape in shapes:
        shading = rng.normal(0, 6, size=(int(shape.mask.sum()), 1))
        pixels[shape.mask] = np.clip(shape.colour[None, :] + shading, 0, 255).astype(np.uint8)
    noise = rng.normal(0, 4, size=pixels.shape)
    pixels = np.clip(pixels.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return pixels, shapes, visible


def _visible_masks(shapes: list[_Shape]) -> list[np.ndarray]:
    """Later shapes are painted on top: each mask minus the union of the ones after it."""
    visible: list[np.ndarray] = []
    if not shapes:
        return visible
    above = np.zeros_like(shapes[0].mask)
    for shape in reversed(shapes):
        visible.append(shape.mask & ~above)
        above = above | shape.mask
    return visible[::-1]


def _random_shape(
    h: int,
    w: int,
    rng: np.random.Generator,
    chosen: tuple[tuple[int, str], ...] = SHAPE_CATEGORIES,
    colours: str = "vivid",
) -> _Shape:
    category_id = chosen[int(rng.integers(len(chosen)))][0]
    radius = math.exp(rng.uniform(math.log(5.0), math.log(0.25 * min(h, w))))
    cx, cy = rng.uniform(0.05 * w, 0.95 * w), rng.uniform(0.05 * h, 0.95 * h)
    return _make_shape(category_id, cx, cy, radius, h, w, rng, colours)


def _neighbour(
    other: _Shape, h: int, w: int, rng: np.random.Generator, colours: str = "vivid"
) -> _Shape:
    xs, ys = np.array(other.polygon[0::2]), np.array(other.polygon[1::2])
    cx, cy = xs.mean(), ys.mean()
    r_other = float(np.hypot(xs - cx, ys - cy).max())
    radius = r_other * rng.uniform(0.6, 1.3)
    angle = rng.uniform(0, 2 * math.pi)
    distance = (r_other + radius) * rng.uniform(0.55, 0.95)
    nx, ny = cx + distance * math.cos(angle), cy + distance * math.sin(angle)
    return _make_shape(other.category_id, nx, ny, radius, h, w, rng, colours)


def _make_shape(
    category_id: int,
    cx: float,
    cy: float,
    radius: float,
    h: int,
    w: int,
    rng: np.random.Generator,
    colours: str = "vivid",
) -> _Shape:
    rotation = rng.uniform(0, 2 * math.pi)
    if category_id == 1:
        angles, radii = np.linspace(0, 2 * math.pi, 32, endpoint=False), np.full(32, radius)
    elif category_id == 3:
        angles, radii = rotation + np.arange(4) * math.pi / 2, np.full(4, radius)
    elif category_id == 7:
        angles, radii = rotation + np.arange(3) * 2 * math.pi / 3, np.full(3, radius)
    elif category_id == 11:
        angles = rotation + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    elif category_id in (13, 19):  # hexagon, pentagon
        sides = 6 if category_id == 13 else 5
        angles, radii = rotation + np.arange(sides) * 2 * math.pi / sides, np.full(sides, radius)
    else:  # cross: a plus sign of arms 0.35 radius wide (12 corners)
        a = math.atan2(0.35, 1.0)
        corner = math.hypot(0.35, 0.35)
        base = np.array([[-a, radius], [a, radius], [math.pi / 4, corner * radius]] * 4)
        quarter = np.repeat(np.arange(4) * math.pi / 2, 3)
        angles, radii = rotation + base[:, 0] + quarter, base[:, 1]
    xs = np.clip(cx + radii * np.cos(angles), 0, w)
    ys = np.clip(cy + radii * np.sin(angles), 0, h)
    polygon = np.stack([xs, ys], axis=1).ravel().round(2).tolist()
    colour = _vivid_colour(rng) if colours == "vivid" else _pastel_colour(rng)
    return _Shape(category_id, polygon, colour, decode_mask([polygon], h, w))


def hsv_colour(
    rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]
) -> np.ndarray:
    """[3] float64 RGB in 0..255: a random hue with saturation and value drawn from the ranges
    (in that order: hue, saturation, value)."""
    hue = rng.uniform(0, 6)
    sat, val = rng.uniform(*saturation), rng.uniform(*value)
    k = (np.array([5.0, 3.0, 1.0]) + hue) % 6
    rgb = val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)
    return (rgb * 255).astype(np.float64)


def _vivid_colour(rng: np.random.Generator) -> np.ndarray:
    return hsv_colour(rng, (0.5, 1.0), (0.5, 1.0))


def _pastel_colour(rng: np.random.Generator) -> np.ndarray:
    """A pale, low-saturation colour (the second task's objects)."""
    return hsv_colour(rng, (0.15, 0.4), (0.8, 1.0))


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """[H, W, 3] uint8: a random gradient, stripes, checkerboard or smooth noise."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    a, b = rng.uniform(20, 235, size=3), rng.uniform(20, 235, size=3)
    angle = rng.uniform(0, math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    kind = rng.integers(4)
    if kind == 0:  # linear gradient
        t = (along - along.min()) / max(along.max() - along.min(), 1e-6)
    elif kind == 1:  # stripes
        t = (np.sin(2 * math.pi * along / rng.uniform(6, 40)) > 0).astype(np.float64)
    elif kind == 2:  # checkerboard
        cell = rng.uniform(8, 40)
        t = ((np.floor(xs / cell) + np.floor(ys / cell)) % 2).astype(np.float64)
    else:  # smooth noise: a coarse random grid, upsampled
        coarse = Image.fromarray((rng.random((h // 16 + 2, w // 16 + 2)) * 255).astype(np.uint8))
        upsampled = coarse.resize((w, h), Image.Resampling.BILINEAR)
        t = np.asarray(upsampled).astype(np.float64) / 255.0
    image = a * (1 - t[..., None]) + b * t[..., None]
    image += rng.normal(0, rng.uniform(2, 15), size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)
