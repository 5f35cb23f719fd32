"""A synthetic keypoint dataset written as real COCO files: stick figures with named joints.

One category, ``figure`` (COCO id 1), with 11 keypoints (:data:`FIGURE_KEYPOINTS`: a head, a
neck, a hip and left/right elbows, hands, knees and feet) and a 10-limb skeleton. A figure's
left limbs are drawn in a darker shade of its colour than its right limbs, so left and right
can be told apart in the pixels (and a horizontal flip, which swaps the names, keeps them
consistent). Figures face either way, overlap each other and are partly hidden behind
occluding blocks: a labelled joint is visible (v = 2) when its own figure's pixels are at it,
occluded (v = 1) when something covers it; joints outside the image are unlabelled (v = 0).
Small figures are, half of the time, left without keypoint labels (``num_keypoints`` 0), as
COCO leaves many small people. The format is COCO person keypoints': ``keypoints`` and
``skeleton`` (1-based) in the category, ``keypoints`` and ``num_keypoints`` per annotation;
the category also carries ``keypoint_sigmas`` (:data:`FIGURE_OKS_SIGMA` for every joint), the
OKS sigmas the evaluation uses.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from maskrcnn.data.annotations import encode_binary_mask
from maskrcnn.data.shapes import ShapesFiles, hsv_colour

FIGURE_KEYPOINTS = (
    "head",
    "neck",
    "left_elbow",
    "right_elbow",
    "left_hand",
    "right_hand",
    "hip",
    "left_knee",
    "right_knee",
    "left_foot",
    "right_foot",
)
# 0-based pairs (the files store COCO's 1-based ones)
FIGURE_SKELETON = (
    (0, 1), (1, 2), (2, 4), (1, 3), (3, 5), (1, 6), (6, 7), (7, 9), (6, 8), (8, 10),
)  # fmt: skip
FIGURE_OKS_SIGMA = 0.1
_LEFT_LIMBS = {(1, 2), (2, 4), (6, 7), (7, 9)}
_SMALL = 50.0  # figures shorter than this (pixels) may go unlabelled


@dataclass
class _Figure:
    joints: np.ndarray  # [K, 2] x, y
    mask: np.ndarray  # [H, W] bool
    paint: np.ndarray  # [H, W, 3] uint8 colours where mask
    height: float
    labelled: bool


def write_figures_dataset(
    out: str | Path,
    *,
    train: int,
    val: int,
    seed: int,
    image_size: tuple[int, int] = (192, 256),
) -> ShapesFiles:
    """Writes ``out/train.json``, ``out/val.json`` and ``out/images/*.png`` (stick figures).

    Args:
        out: output folder (created).
        train, val: number of images per split.
        seed: the same seed writes the same files.
        image_size: (h, w) of the images.
    """
    if train < 0 or val < 0:
        raise ValueError(f"image counts must be >= 0, got train={train}, val={val}")
    if min(image_size) < 64:
        raise ValueError(f"image_size must be at least 64x64 for figures, got {image_size}")
    out = Path(out)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    files = ShapesFiles(out / "train.json", out / "val.json", image_dir)
    for split_index, (split, count, ann_file) in enumerate(
        [("train", train, files.train_ann), ("val", val, files.val_ann)]
    ):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_index, 15]))
        ann_file.write_text(json.dumps(_write_split(split, count, image_size, image_dir, rng)))
    return files


def _write_split(
    split: str, count: int, size: tuple[int, int], image_dir: Path, rng: np.random.Generator
) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    h, w = size
    for i in range(count):
        file_name = f"{split}_{i:05d}.png"
        image_id = i + 1
        pixels, figures, visible, occluders = _render(h, w, rng)
        Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for fig, vis in zip(figures, visible):
            rle = encode_binary_mask(vis)
            keypoints = _keypoint_labels(fig, vis, occluders, h, w)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": {"size": [h, w], "counts": rle["counts"]},
                    "area": int(vis.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                    "keypoints": keypoints,
                    "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0),
                }
            )
    category = {
        "id": 1,
        "name": "figure",
        "supercategory": "figure",
        "keypoints": list(FIGURE_KEYPOINTS),
        "skeleton": [[a + 1, b + 1] for a, b in FIGURE_SKELETON],
        # OKS sigmas (read by maskrcnn.evaluation). OKS scales distances by sqrt(mask area):
        # a figure's box is ~3.9x its mask (median), a COCO person's ~2x, so COCO's mean
        # sigma 0.067 x sqrt(3.9 / 2) ~ 0.095 gives the same tolerance per extent; 0.1.
        "keypoint_sigmas": [FIGURE_OKS_SIGMA] * len(FIGURE_KEYPOINTS),
    }
    return {
        "info": {"description": f"synthetic stick figures with keypoints ({split})"},
        "images": images,
        "annotations": annotations,
        "categories": [category],
    }


def _keypoint_labels(
    fig: _Figure, visible: np.ndarray, occluders: np.ndarray, h: int, w: int
) -> list[float]:
    """COCO's flat [x, y, v] * K for one figure."""
    out: list[float] = []
    for x, y in fig.joints.tolist():
        if not fig.labelled or not (0 <= x < w and 0 <= y < h):
            out += [0.0, 0.0, 0]
            continue
        col, row = int(x), int(y)
        window = visible[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
        v = 2 if window.any() and not occluders[row, col] else 1
        out += [round(x, 2), round(y, 2), v]
    return out


def _render(
    h: int, w: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[_Figure], list[np.ndarray], np.ndarray]:
    """Image [H, W, 3], figures (painter's order), their visible masks, the occluder mask."""
    pixels = _background(h, w, rng)
    figures = [
        _figure(h, w, rng) for _ in range(int(rng.integers(1, 4)) if rng.random() > 0.05 else 0)
    ]
    occluders = np.zeros((h, w), dtype=bool)
    if figures and rng.random() < 0.5:  # a block in front of everything
        bw, bh = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.3) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        occluders[int(y0) : int(y0 + bh), int(x0) : int(x0 + bw)] = True
    above = occluders.copy()
    visible: list[np.ndarray] = []
    for fig in reversed(figures):
        visible.append(fig.mask & ~above)
        above |= fig.mask
    visible = visible[::-1]
    keep = [v.sum() >= 0.4 * f.mask.sum() and v.sum() >= 20 for f, v in zip(figures, visible)]
    figures = [f for f, k in zip(figures, keep) if k]
    # recompute with the kept figures only (a dropped one must not hide the others)
    above = occluders.copy()
    visible = []
    for fig in reversed(figures):
        visible.append(fig.mask & ~above)
        above |= fig.mask
    visible = visible[::-1]
    for fig in figures:
        pixels[fig.mask] = fig.paint[fig.mask]
    if occluders.any():
        pixels[occluders] = np.clip(rng.uniform(30, 220, size=3), 0, 255).astype(np.uint8)
    noise = rng.normal(0, 4, size=pixels.shape)
    pixels = np.clip(pixels.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return pixels, figures, visible, occluders


def _figure(h: int, w: int, rng: np.random.Generator) -> _Figure:
    """A random stick figure: joints from a random pose, limbs drawn as thick lines."""
    s = math.exp(rng.uniform(math.log(40.0), math.log(0.9 * min(h, w))))
    hip = np.array([rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.3 * h, 0.8 * h)])
    lean = rng.normal(0, 0.2)
    up = np.array([math.sin(lean), -math.cos(lean)])
    neck = hip + 0.32 * s * up
    head = neck + 0.14 * s * up
    facing = 1.0 if rng.random() < 0.5 else -1.0  # which image side the left limbs go to

    def limb(start: np.ndarray, angle: float, length: float) -> np.ndarray:
        return start + length * np.array([math.cos(angle), math.sin(angle)])

    joints = np.zeros((len(FIGURE_KEYPOINTS), 2))
    joints[0], joints[1], joints[6] = head, neck, hip
    for side, (elbow, hand, knee, foot) in ((1.0, (2, 4, 7, 9)), (-1.0, (3, 5, 8, 10))):
        d = side * facing  # +1: towards the image's right
        arm = math.pi / 2 - d * rng.uniform(0.2, 1.8)  # from straight down towards d
        joints[elbow] = limb(neck, arm, 0.18 * s)
        joints[hand] = limb(joints[elbow], arm - d * rng.uniform(-0.8, 0.8), 0.17 * s)
        leg = math.pi / 2 - d * rng.uniform(0.05, 0.6)
        joints[knee] = limb(hip, leg, 0.24 * s)
        joints[foot] = limb(joints[knee], leg + d * rng.uniform(-0.1, 0.6), 0.23 * s)
    colour = _vivid_colour(rng)
    dark = colour * 0.45
    canvas = Image.new("RGB", (w, h))
    mask_img = Image.new("L", (w, h))
    draw, mdraw = ImageDraw.Draw(canvas), ImageDraw.Draw(mask_img)
    width = max(3, int(round(0.07 * s)))
    for a, b in FIGURE_SKELETON:
        if a == 0:
            continue  # the head is a disc
        fill = dark if (a, b) in _LEFT_LIMBS else colour
        xy = [tuple(joints[a]), tuple(joints[b])]
        draw.line(xy, fill=tuple(int(v) for v in fill), width=width)
        mdraw.line(xy, fill=255, width=width)
        for p in (joints[a], joints[b]):  # round joints
            r = width / 2
            box = [p[0] - r, p[1] - r, p[0] + r, p[1] + r]
            draw.ellipse(box, fill=tuple(int(v) for v in fill))
            mdraw.ellipse(box, fill=255)
    r = 0.09 * s
    box = [head[0] - r, head[1] - r, head[0] + r, head[1] + r]
    draw.ellipse(box, fill=tuple(int(v) for v in colour))
    mdraw.ellipse(box, fill=255)
    labelled = s >= _SMALL or rng.random() < 0.5
    return _Figure(
        joints=joints,
        mask=np.asarray(mask_img) > 0,
        paint=np.asarray(canvas),
        height=s,
        labelled=labelled,
    )


def _vivid_colour(rng: np.random.Generator) -> np.ndarray:
    return hsv_colour(rng, (0.6, 1.0), (0.75, 1.0))


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """[H, W, 3] uint8: a random linear gradient with noise."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    a, b = rng.uniform(20, 235, size=3), rng.uniform(20, 235, size=3)
    angle = rng.uniform(0, math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    t = (along - along.min()) / max(along.max() - along.min(), 1e-6)
    image = a * (1 - t[..., None]) + b * t[..., None]
    image += rng.normal(0, rng.uniform(2, 10), size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)
