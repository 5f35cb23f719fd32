"""Prediction on image files: overlays and one JSON of detections, decoding overlapped with compute.

A DataLoader's workers decode the next images (:func:`maskrcnn.data.io.load_image`) while the
main process runs the model. Each kept detection's mask is pasted on its own, encoded as COCO
RLE for the JSON, and drawn on the overlay.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from maskrcnn.data.annotations import encode_binary_mask
from maskrcnn.data.io import load_image
from maskrcnn.evaluation.results import paste_one
from maskrcnn.modeling.modes import eval_mode
from maskrcnn.ops.paste import paste_function
from maskrcnn.structures import Instances
from maskrcnn.viz.draw import blend_mask, draw_instances, instance_color, mask_canvas

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from files and folders (a folder's images sorted by name; not recursive)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {p}")
    return paths


def check_output_folder(out: Path, paths: Sequence[Path]) -> None:
    """Refuses an output folder that would overwrite an input or is not a folder.

    Raises:
        ValueError: ``out`` is an existing file, or holds one of the input images (its
            overlays ``<stem>.png`` or ``predictions.json`` could replace them).
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file, not a folder: name a folder")
    resolved = out.resolve()
    for path in paths:
        if path.resolve().parent == resolved:
            raise ValueError(
                f"output folder {out} holds the input image {path}: its overlays could "
                "overwrite the inputs; choose another --out"
            )


@dataclass
class _Decoded:
    index: int
    path: Path
    image: Tensor | None
    error: str | None


class _ImageFiles(Dataset[_Decoded]):
    """Decodes image files; a failure is returned (not raised) so the main process names it."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Decoded:
        path = self.paths[index]
        try:
            return _Decoded(index, path, load_image(path), None)
        except (OSError, ValueError) as err:
            return _Decoded(index, path, None, str(err))


def _collate(batch: list[_Decoded]) -> list[_Decoded]:
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict_folder` did.

    Attributes:
        num_images: images processed.
        seconds: wall time from the first batch request to the last write.
        images_per_second: ``num_images / seconds``.
        json_path: the predictions file.
        overlays: overlay PNG per image, in input order.
        skipped: the images that could not be read (with ``skip_bad_images``), in input order.
    """

    num_images: int
    seconds: float
    images_per_second: float
    json_path: Path
    overlays: list[Path]
    skipped: tuple[Path, ...] = ()


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in used:
        stem, n = f"{path.stem}_{n}", n + 1
    used.add(stem)
    return stem


def _record_and_overlay(
    image: Tensor,
    path: Path,
    result: Instances,
    *,
    score_thresh: float,
    paste: str,
    thresh: float,
    skeleton: Sequence[tuple[int, int]] = (),
) -> tuple[dict[str, Any], Any]:
    """One image's JSON record and overlay; masks pasted, encoded and blended into the
    overlay one detection at a time (memory bounded by the image, not image x detections)."""
    scores = result.scores if result.scores is not None else torch.ones(len(result))
    kept = result[scores >= score_thresh]
    size = (int(image.shape[1]), int(image.shape[2]))
    rles = []
    canvas = mask_canvas(image)
    if kept.masks is not None:
        fn = paste_function(paste)
        for i in range(len(kept)):
            plane = paste_one(
                kept.masks[i].float(), kept.boxes[i], size, paste=fn, threshold=thresh
            )
            rles.append(encode_binary_mask(plane))
            blend_mask(canvas, plane, instance_color(i))  # draw_instances' colour of kept[i]
            del plane
    blended = torch.from_numpy(canvas.round().astype(np.uint8)).permute(2, 0, 1)
    del canvas
    drawn = Instances(
        image_size=size,
        boxes=kept.boxes.cpu(),
        labels=kept.labels.cpu(),
        scores=None if kept.scores is None else kept.scores.cpu(),
        masks=None,
        category_names=kept.category_names,
        keypoints=None if kept.keypoints is None else kept.keypoints.cpu(),
    )
    record = {
        "file": str(path),
        "height": size[0],
        "width": size[1],
        "boxes": [[round(v, 2) for v in b] for b in kept.boxes.tolist()],
        "scores": [] if kept.scores is None else [round(s, 4) for s in kept.scores.tolist()],
        "labels": kept.labels.tolist(),
        "categories": list(kept.category_names),
        "masks": rles,
    }
    if kept.keypoints is not None:
        record["keypoints"] = [
            [[round(v, 2) for v in point] for point in instance]
            for instance in kept.keypoints.tolist()
        ]
    if kept.keypoints_scores is not None:
        record["keypoints_scores"] = [
            [round(v, 3) for v in instance] for instance in kept.keypoints_scores.tolist()
        ]
    return record, draw_instances(blended, drawn, score_thresh=score_thresh, skeleton=skeleton)


@torch.inference_mode()
def predict_folder(
    model: Any,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    score_thresh: float = 0.5,
    batch_size: int = 1,
    num_workers: int = 2,
    progress: bool = True,
    skip_bad_images: bool = False,
) -> PredictSummary:
    """Detects instances in image files; writes overlays and ``predictions.json``.

    Args:
        model: a :class:`~maskrcnn.modeling.MaskRCNN` (run in eval mode, then put back in its
            mode).
        inputs: image files and/or folders of images.
        out_dir: receives ``<stem>.png`` overlays and ``predictions.json`` (one record per
            image: file, height, width, boxes xyxy, scores, labels, categories, masks as COCO
            RLE with counts as str, and for a keypoint model ``keypoints`` [N][K][x, y, v] and
            ``keypoints_scores``), detections below ``score_thresh`` left out; overlays
            draw the keypoints joined by ``cfg.keypoint_head.skeleton``.
        score_thresh: minimum score kept.
        batch_size: images per forward pass.
        num_workers: decoding processes (0: decode in the main process).
        progress: show a progress bar (the throughput is printed either way).
        skip_bad_images: an image that cannot be read is named, counted and skipped. Without
            it, the other images are still processed and ``predictions.json`` written, then a
            ``ValueError`` names the unreadable ones.

    Returns:
        A :class:`PredictSummary` (images per second included).

    Raises:
        FileNotFoundError / ValueError naming the input that does not exist or cannot be read
            (``predictions.json`` holds the images read, whatever fails later).
        ValueError: ``out_dir`` is a file or holds an input image (checked before anything is
            written).
    """
    paths = list_images(inputs)
    if not paths:
        raise ValueError(f"no images found in {[str(p) for p in inputs]}")
    out = Path(out_dir)
    check_output_folder(out, paths)
    out.mkdir(parents=True, exist_ok=True)
    # An exported graph (maskrcnn.export.OnnxMaskRCNN) runs on the CPU and has no parameters.
    device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else "cpu"
    mask_cfg = model.cfg.mask_head
    keypoint_cfg = getattr(model.cfg, "keypoint_head", None)
    skeleton = () if keypoint_cfg is None else keypoint_cfg.skeleton
    loader = DataLoader(
        _ImageFiles(paths),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )
    records: list[dict[str, Any]] = []
    overlays: list[Path] = []
    bad: list[tuple[Path, str]] = []
    used: set[str] = set()
    json_path = out / "predictions.json"
    start = time.perf_counter()
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    try:
        with eval_mode(model), bar:
            for batch in loader:
                good = []
                for item in batch:
                    if item.error is None:
                        good.append(item)
                        continue
                    named = str(item.path) in item.error
                    bad.append((item.path, item.error if named else f"{item.path}: {item.error}"))
                    skip = ", skipped" if skip_bad_images else ""
                    tqdm.write(f"cannot read {bad[-1][1]}{skip}")
                images = [item.image.to(device) for item in good if item.image is not None]
                results = model.detect(images, paste_masks=False) if images else []
                for item, result in zip(good, results):
                    record, overlay = _record_and_overlay(
                        item.image,
                        item.path,
                        result.to("cpu"),
                        score_thresh=score_thresh,
                        paste=mask_cfg.paste,
                        thresh=mask_cfg.threshold,
                        skeleton=skeleton,
                    )
                    target = out / f"{_unique_stem(item.path, used)}.png"
                    overlay.save(target)
                    records.append(record)
                    overlays.append(target)
                bar.update(len(batch))
    finally:  # the results so far are kept, whatever stops the loop
        json_path.write_text(json.dumps(records) + "\n")
    if bad and not skip_bad_images:
        raise ValueError(
            f"{len(bad)} of {len(paths)} images could not be read: "
            + "; ".join(error for _, error in bad)
            + f". The {len(records)} others are in {json_path}; --skip-bad-images skips them"
        )
    seconds = time.perf_counter() - start
    done = len(records)
    rate = done / seconds if seconds > 0 else float("inf")
    skipped = f", {len(bad)} unreadable skipped" if bad else ""
    print(f"{done} images in {seconds:.2f} s: {rate:.2f} images/s{skipped} -> {out}")
    return PredictSummary(done, seconds, rate, json_path, overlays, tuple(p for p, _ in bad))
