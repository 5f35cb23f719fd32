"""Pictures of results: instance overlays, and ground truth beside predictions in a grid."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from maskrcnn.structures import Instances


def instance_color(index: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour for the index-th instance (golden-ratio hues)."""
    hue = (0.13 + index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(255 * r), int(255 * g), int(255 * b)


def _to_uint8_hwc(image: Tensor) -> np.ndarray:
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image: expected a [3, H, W] tensor, got {shape}")
    if image.dtype == torch.uint8:
        return image.permute(1, 2, 0).cpu().numpy()
    scaled = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return scaled.permute(1, 2, 0).cpu().numpy()


def _binary_masks(instances: Instances, size: tuple[int, int]) -> Tensor | None:
    """[N, H, W] bool from bool [N, H, W] or soft [N, 1, H, W] masks (threshold 0.5)."""
    masks = instances.masks
    if masks is None:
        return None
    given_shape = tuple(masks.shape)
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3 or tuple(masks.shape[-2:]) != size:
        raise ValueError(
            f"instances.masks: expected image-sized [N, {size[0]}, {size[1]}] or "
            f"[N, 1, {size[0]}, {size[1]}] masks, got {given_shape}"
        )
    return masks if masks.dtype == torch.bool else masks >= 0.5


def mask_canvas(image: Tensor) -> np.ndarray:
    """[H, W, 3] float32 pixels (0..255) of a [3, H, W] image, to blend masks into one at a
    time with :func:`blend_mask` (memory: the image, whatever the number of masks)."""
    return _to_uint8_hwc(image).astype(np.float32)


def blend_mask(
    canvas: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], *, alpha: float = 0.45
) -> None:
    """Blends ``color`` into ``canvas`` [H, W, 3] float32 where ``mask`` [H, W] bool is set."""
    canvas[mask] = canvas[mask] * (1 - alpha) + np.asarray(color, np.float32) * alpha


def draw_keypoints(
    draw: ImageDraw.ImageDraw,
    keypoints: Tensor,
    color: tuple[int, int, int],
    skeleton: Sequence[tuple[int, int]] = (),
    *,
    radius: float = 2.5,
) -> None:
    """Draws one instance's keypoints [K, 3] (x, y, v) and its skeleton's limbs.

    Keypoints with v = 0 (not labelled) are left out, and so are limbs touching them; limbs
    are drawn in ``color``, joints as white-rimmed dots.
    """
    if keypoints.dim() != 2 or keypoints.shape[1] != 3:
        raise ValueError(f"keypoints: expected [K, 3], got {tuple(keypoints.shape)}")
    points = keypoints.tolist()
    for a, b in skeleton:
        if a >= len(points) or b >= len(points):
            raise ValueError(f"skeleton pair {(a, b)} for {len(points)} keypoints")
        if points[a][2] > 0 and points[b][2] > 0:
            draw.line((points[a][0], points[a][1], points[b][0], points[b][1]), fill=color, width=2)
    for x, y, v in points:
        if v > 0:
            box = (x - radius, y - radius, x + radius, y + radius)
            draw.ellipse(box, fill=color, outline=(255, 255, 255))


def draw_instances(
    image: Tensor,
    instances: Instances,
    *,
    score_thresh: float = 0.5,
    alpha: float = 0.45,
    skeleton: Sequence[tuple[int, int]] = (),
) -> Image.Image:
    """Overlays masks (semi-transparent), boxes and "name score" labels on an image.

    Args:
        image: [3, H, W] RGB floats in [0, 1] (or uint8).
        instances: boxes [N, 4] xyxy in the image's pixels; optional ``scores`` (ground truth
            has none: every instance is drawn); optional image-sized masks, bool [N, H, W] or
            soft [N, 1, H, W]; optional ``keypoints`` [N, K, 3] (x, y, v), drawn as dots.
        score_thresh: instances scoring below it are not drawn.
        alpha: mask opacity.
        skeleton: pairs of keypoint indices joined by a line (e.g. ``cfg.keypoint_head.skeleton``).

    Returns:
        An RGB PIL image of size (W, H).
    """
    pixels = _to_uint8_hwc(image)
    size = (pixels.shape[0], pixels.shape[1])
    keep = list(range(len(instances)))
    if instances.scores is not None:
        keep = [i for i, s in enumerate(instances.scores.tolist()) if s >= score_thresh]
    masks = _binary_masks(instances, size)
    canvas = pixels.astype(np.float32)
    colors = {i: instance_color(j) for j, i in enumerate(keep)}
    if masks is not None:
        for i in keep:
            blend_mask(canvas, masks[i].cpu().numpy(), colors[i], alpha=alpha)
    out = Image.fromarray(canvas.round().astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    names = instances.category_names
    labels = instances.labels.tolist()
    for i in keep:
        x0, y0, x1, y1 = instances.boxes[i].tolist()
        draw.rectangle((x0, y0, x1, y1), outline=colors[i], width=2)
        name = names[i] if i < len(names) and names[i] else str(labels[i])
        text = name if instances.scores is None else f"{name} {instances.scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx, ty = max(x0, 0), max(y0 - (bottom - top) - 3, 0)
        draw.rectangle((tx, ty, tx + right - left + 3, ty + bottom - top + 3), fill=colors[i])
        draw.text((tx + 2 - left, ty + 1 - top), text, fill=(0, 0, 0), font=font)
    if instances.keypoints is not None:
        for i in keep:
            draw_keypoints(draw, instances.keypoints[i].cpu(), colors[i], skeleton)
    return out


def predictions_grid(
    images: Sequence[Tensor],
    gts: Sequence[Instances],
    preds: Sequence[Instances],
    out_path: str | Path,
    *,
    score_thresh: float = 0.5,
    gap: int = 6,
    skeleton: Sequence[tuple[int, int]] = (),
) -> Path:
    """Writes one PNG: a row per image, ground truth on the left, predictions on the right.

    Args:
        images: [3, H_i, W_i] images in [0, 1].
        gts: ground truth per image (image-sized masks, no scores).
        preds: predictions per image (image-sized masks, scores).
        out_path: PNG to write (folders are created).
        score_thresh: predictions below it are not drawn.
        gap: pixels between cells.
        skeleton: keypoint pairs to join, for instances with keypoints.
    """
    if not len(images) == len(gts) == len(preds):
        raise ValueError(
            f"predictions_grid: {len(images)} images, {len(gts)} gts, {len(preds)} preds"
        )
    if not images:
        raise ValueError("predictions_grid: no images")
    cells = [
        (
            draw_instances(img, gt, skeleton=skeleton),
            draw_instances(img, pred, score_thresh=score_thresh, skeleton=skeleton),
        )
        for img, gt, pred in zip(images, gts, preds)
    ]
    titles = ("ground truth", f"predictions (score >= {score_thresh:g})")
    font = ImageFont.load_default()
    title_w = max(int(font.getbbox(t)[2]) for t in titles)
    header = 16
    cell_w = max(max(left.width for left, _ in cells), title_w)
    width = 2 * cell_w + 3 * gap
    height = header + sum(left.height for left, _ in cells) + (len(cells) + 1) * gap
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    draw.text((gap, 2), titles[0], fill=(0, 0, 0), font=font)
    draw.text((2 * gap + cell_w, 2), titles[1], fill=(0, 0, 0), font=font)
    y = header + gap
    for left, right in cells:
        grid.paste(left, (gap, y))
        grid.paste(right, (2 * gap + cell_w, y))
        y += left.height + gap
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_path)
    return out_path
