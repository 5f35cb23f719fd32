"""COCO evaluation: inference image by image, masks encoded as they come, then COCOeval.

    evaluate_coco(model, (ann_file, image_dir)) -> EvalResult (bbox and segm, 12 numbers each;
    keypoints, OKS AP with 10 numbers, for a keypoint model on a keypoint dataset)

Each image's detections stay in the RoI frame (``detect(paste_masks=False)``); every kept
detection is pasted into one image-sized plane, thresholded and run-length encoded on the spot
(:mod:`maskrcnn.evaluation.results`), so memory does not grow with N x H x W. Under
``torch.distributed`` each rank evaluates a disjoint shard of the images (:func:`shard_indices`,
:func:`evaluate_shard`); the shards are gathered to rank 0 (:func:`merge_shards`), which runs
COCOeval and shares the numbers with every rank.

COCOeval runs on one of two back ends (``coco_backend``): ``"pycocotools"`` (the reference) or
``"faster"`` (``faster-coco-eval``: the same algorithm with the per-image matching and the
accumulation in C++). The default is ``"faster"`` where it is installed: on the same detections
its 12 (or 10) summary numbers equal pycocotools' to the last printed digit
(``tests/evaluation/test_coco_backends.py``). Inference and COCOeval are timed apart
(:class:`EvalTiming`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from maskrcnn.evaluation.results import LabelMap, detections_to_coco, resolve_label_map
from maskrcnn.evaluation.source import EvalSource, open_source
from maskrcnn.modeling.modes import eval_mode

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
# COCOeval's summary for iouType "keypoints" (OKS): no small-object range.
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# pycocotools' per-keypoint OKS sigmas are COCO person's 17; other keypoint sets get this one
# value for every keypoint (the mean of COCO's 17) unless the caller gives its own.
DEFAULT_KEYPOINT_SIGMA = 0.067

CocoBackend = Literal["pycocotools", "faster"]
COCO_BACKENDS: tuple[CocoBackend, ...] = ("pycocotools", "faster")


def default_coco_backend() -> CocoBackend:
    """``"faster"`` (faster-coco-eval) where it is installed, else ``"pycocotools"``."""
    return "faster" if importlib.util.find_spec("faster_coco_eval") is not None else "pycocotools"


def check_coco_backend(backend: str | None) -> CocoBackend:
    """``backend`` checked (None: :func:`default_coco_backend`).

    Raises:
        ValueError: not one of :data:`COCO_BACKENDS`, or ``"faster"`` without faster-coco-eval.
    """
    if backend is None:
        return default_coco_backend()
    if backend == "pycocotools":
        return "pycocotools"
    if backend == "faster":
        if importlib.util.find_spec("faster_coco_eval") is None:
            raise ValueError("coco backend 'faster' needs faster-coco-eval (pip install it)")
        return "faster"
    raise ValueError(f"coco backend: expected one of {list(COCO_BACKENDS)}, got {backend!r}")


@dataclass(frozen=True)
class CocoStats:
    """COCOeval's summary numbers (in [0, 1]; -1 where COCO has nothing to score): 12 named
    by :data:`STAT_NAMES` for boxes and masks, 10 by :data:`KEYPOINT_STAT_NAMES` for OKS."""

    values: tuple[float, ...]
    names: tuple[str, ...] = STAT_NAMES

    def __post_init__(self) -> None:
        if len(self.values) != len(self.names):
            raise ValueError(f"CocoStats: expected {len(self.names)} values, got {self.values}")

    def __getitem__(self, name: str) -> float:
        return self.values[self.names.index(name)]

    @property
    def ap(self) -> float:
        """AP at IoU 0.50:0.95, the headline number."""
        return self.values[0]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.values))

    @staticmethod
    def zeros(names: tuple[str, ...] = STAT_NAMES) -> CocoStats:
        return CocoStats((0.0,) * len(names), names)


@dataclass(frozen=True)
class EvalTiming:
    """Where an evaluation's time went: inference and COCOeval, apart.

    Attributes:
        num_images: images evaluated.
        inference_seconds: model forward, mask paste and encoding into result records (image
            loading not counted); under ``torch.distributed``, the slowest rank's.
        load_seconds: reading the images (the slowest rank's).
        cocoeval_seconds: per part, wall seconds of COCOeval on rank 0: ``"bbox"``, ``"segm"``,
            ``"keypoints"`` (each: loadRes, evaluate, accumulate, summarize) and, for the
            ``"faster"`` back end, ``"ground_truth"`` (its copy of the ground truth).
        backend: the COCOeval back end.
    """

    num_images: int
    inference_seconds: float
    load_seconds: float
    cocoeval_seconds: dict[str, float]
    backend: CocoBackend

    @property
    def cocoeval_total_seconds(self) -> float:
        return sum(self.cocoeval_seconds.values())

    @property
    def inference_images_per_second(self) -> float:
        return _rate(self.num_images, self.inference_seconds)

    @property
    def cocoeval_images_per_second(self) -> float:
        return _rate(self.num_images, self.cocoeval_total_seconds)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (a rate with nothing timed, e.g. no detections to score, is None)."""
        return {
            "num_images": self.num_images,
            "inference_seconds": self.inference_seconds,
            "inference_images_per_second": _finite(self.inference_images_per_second),
            "load_seconds": self.load_seconds,
            "cocoeval_backend": self.backend,
            "cocoeval_seconds": dict(self.cocoeval_seconds),
            "cocoeval_total_seconds": self.cocoeval_total_seconds,
            "cocoeval_images_per_second": _finite(self.cocoeval_images_per_second),
        }

    def summary(self) -> str:
        """Two lines: inference and COCOeval, each in seconds and images per second."""
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in self.cocoeval_seconds.items())
        return (
            f"inference: {self.num_images} images in {self.inference_seconds:.2f} s, "
            f"{self.inference_images_per_second:.2f} images/s "
            f"(image loading {self.load_seconds:.2f} s, not counted)\n"
            f"COCOeval ({self.backend}): {self.cocoeval_total_seconds:.2f} s, "
            f"{self.cocoeval_images_per_second:.2f} images/s ({parts})\n"
        )


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


@dataclass(frozen=True)
class EvalResult:
    """Box and mask metrics of one evaluation run (and keypoint OKS metrics, or None).

    ``timing`` (None where not measured) is left out of comparisons: two runs with the same
    numbers are equal whatever their speed.
    """

    bbox: CocoStats
    segm: CocoStats
    num_images: int
    num_detections: int
    keypoints: CocoStats | None = None
    timing: EvalTiming | None = field(default=None, compare=False)

    def flat(self) -> dict[str, float]:
        """``{"bbox_AP": ..., "segm_AP50": ..., "keypoints_AP": ...}``: a training log's keys."""
        out = {f"bbox_{k}": v for k, v in self.bbox.as_dict().items()}
        out.update({f"segm_{k}": v for k, v in self.segm.as_dict().items()})
        if self.keypoints is not None:
            out.update({f"keypoints_{k}": v for k, v in self.keypoints.as_dict().items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bbox": self.bbox.as_dict(),
            "segm": self.segm.as_dict(),
            "num_images": self.num_images,
            "num_detections": self.num_detections,
        }
        if self.keypoints is not None:
            out["keypoints"] = self.keypoints.as_dict()
        if self.timing is not None:
            out["timing"] = self.timing.to_dict()
        return out

    def table(self) -> str:
        """A markdown table of both rows, in percent ("-" where COCO reports -1)."""
        lines = [
            "| task | " + " | ".join(STAT_NAMES) + " |",
            "|---|" + "---:|" * len(STAT_NAMES),
        ]
        for task, stats in (("bbox", self.bbox), ("segm", self.segm)):
            cells = ["-" if v < 0 else f"{100 * v:.1f}" for v in stats.values]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        if self.keypoints is not None:
            cells = ["-" if v < 0 else f"{100 * v:.1f}" for v in self.keypoints.values]
            lines += [
                "",
                "| task | " + " | ".join(KEYPOINT_STAT_NAMES) + " |",
                "|---|" + "---:|" * len(KEYPOINT_STAT_NAMES),
                "| keypoints | " + " | ".join(cells) + " |",
            ]
        return "\n".join(lines) + "\n"


@dataclass
class ShardResult:
    """One rank's share: the image ids it ran and their COCO result records.

    ``inference_seconds``: model forward, paste and encoding; ``load_seconds``: image reading.
    """

    image_ids: list[int]
    detections: list[dict[str, Any]]
    inference_seconds: float = 0.0
    load_seconds: float = 0.0


def shard_indices(num_items: int, rank: int, world_size: int) -> list[int]:
    """Dataset indices of ``rank``'s shard: every ``world_size``-th one, disjoint across ranks."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return list(range(rank, num_items, world_size))


@torch.inference_mode()
def evaluate_shard(
    model: Any,
    source: EvalSource,
    indices: Sequence[int],
    label_map: LabelMap,
    *,
    progress: bool = False,
) -> ShardResult:
    """Runs ``model.detect`` on the images at ``indices`` and encodes the detections.

    Args:
        model: a module with ``detect(images, *, paste_masks)`` and ``cfg.mask_head``
            (``paste``, ``threshold``), e.g. a :class:`~maskrcnn.modeling.MaskRCNN`; it runs in
            eval mode and is put back in its mode after.
        source: the images and their ground truth (:func:`open_source`).
        indices: which of ``source``'s images to run.
        label_map: model label -> COCO category id.
        progress: show a progress bar.
    """
    device = next(model.parameters(), torch.empty(0)).device
    mask_cfg = model.cfg.mask_head
    shard = ShardResult(image_ids=[], detections=[])
    with eval_mode(model):
        for index in tqdm(indices, desc="eval", disable=not progress, unit="img"):
            start = time.perf_counter()
            image, image_id = source.load(index)
            loaded = time.perf_counter()
            result = model.detect([image.to(device)], paste_masks=False)[0]
            shard.image_ids.append(image_id)
            shard.detections.extend(
                detections_to_coco(
                    result, image_id, label_map, paste=mask_cfg.paste, threshold=mask_cfg.threshold
                )
            )
            shard.load_seconds += loaded - start
            shard.inference_seconds += time.perf_counter() - loaded
    return shard


def merge_shards(shards: Sequence[ShardResult]) -> ShardResult:
    """Joins gathered shards in a fixed order (by image id, then by descending score)."""
    seen: set[int] = set()
    detections: list[dict[str, Any]] = []
    for shard in shards:
        overlap = seen.intersection(shard.image_ids)
        if overlap:
            raise ValueError(f"shards overlap: image ids {sorted(overlap)[:10]} appear twice")
        seen.update(shard.image_ids)
        detections.extend(shard.detections)
    detections.sort(key=lambda d: (d["image_id"], -d["score"]))
    return ShardResult(
        image_ids=sorted(seen),
        detections=detections,
        inference_seconds=max((s.inference_seconds for s in shards), default=0.0),
        load_seconds=max((s.load_seconds for s in shards), default=0.0),
    )


def keypoint_sigmas(coco_gt: COCO, given: Sequence[float] | None = None) -> np.ndarray | None:
    """Per-keypoint OKS sigmas for ``coco_gt``'s keypoints (None: it has no keypoints).

    ``given`` if set (one per keypoint); else the category's ``keypoint_sigmas`` list if the
    file has one (our extension of COCO's format); COCO's 17 person sigmas (pycocotools'
    default) for 17 keypoints; otherwise :data:`DEFAULT_KEYPOINT_SIGMA` for every keypoint.
    """
    cats = [c for c in coco_gt.dataset.get("categories", []) if "keypoints" in c]
    if not cats:
        return None
    k = len(cats[0]["keypoints"])
    where = "keypoint_sigmas"
    if given is None and "keypoint_sigmas" in cats[0]:
        given = cats[0]["keypoint_sigmas"]
        where = f"category {cats[0].get('id')} ({cats[0].get('name')!r}): keypoint_sigmas"
    if given is not None:
        try:
            sigmas = np.asarray(given, dtype=np.float64)
        except (TypeError, ValueError):
            sigmas = np.zeros(0)
        if sigmas.shape != (k,) or not bool((sigmas > 0).all()):
            raise ValueError(f"{where}: expected {k} positive numbers, got {given!r}")
        return sigmas
    if k == 17:
        return np.asarray(COCOeval(iouType="keypoints").params.kpt_oks_sigmas, dtype=np.float64)
    return np.full(k, DEFAULT_KEYPOINT_SIGMA)


def _fill_num_keypoints(coco_gt: COCO) -> None:
    """COCOeval ignores ground truth by ``num_keypoints``; fills it where a file leaves it out."""
    for ann in coco_gt.dataset.get("annotations", []):
        if "keypoints" in ann and "num_keypoints" not in ann:
            ann["num_keypoints"] = sum(1 for v in ann["keypoints"][2::3] if v > 0)


def _faster_ground_truth(coco_gt: COCO) -> Any:
    """faster-coco-eval's own ``COCO`` of ``coco_gt``'s dataset (a deep copy: its COCOeval
    adds keys to the ground truth's annotations)."""
    from faster_coco_eval import COCO as FasterCOCO

    return FasterCOCO(copy.deepcopy(coco_gt.dataset))


def _summary(
    coco_gt: Any,
    records: list[dict[str, Any]],
    iou_type: str,
    image_ids: Sequence[int],
    *,
    backend: CocoBackend,
    sigmas: np.ndarray | None = None,
) -> tuple[float, ...]:
    """COCOeval's ``stats`` of ``records`` (consumed: loadRes adds keys to them).

    Args:
        coco_gt: the ground truth: a pycocotools ``COCO`` for ``"pycocotools"``, a
            faster-coco-eval one (:func:`_faster_ground_truth`) for ``"faster"``.
        records: COCO result records, at least one.
        iou_type: ``"bbox"``, ``"segm"`` or ``"keypoints"``.
        image_ids: the images scored.
        backend: which COCOeval.
        sigmas: per-keypoint OKS sigmas (``"keypoints"``).
    """
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(records)
        if backend == "faster":
            from faster_coco_eval import COCOeval_faster

            evaluator: Any = COCOeval_faster(
                coco_gt,
                coco_dt,
                iou_type,
                print_function=_quiet,
                rle_iou_max_workers=max(1, torch.get_num_threads()),
            )
        else:
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = list(image_ids)
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return tuple(float(v) for v in np.asarray(evaluator.stats))


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def _keypoint_stats(
    coco_gt: Any, merged: ShardResult, sigmas: np.ndarray, *, backend: CocoBackend
) -> CocoStats:
    """COCOeval "keypoints" (OKS AP) of the detections that carry keypoints."""
    # As torchvision's references: records without a box, so that loadRes takes each
    # detection's extent and area from its keypoints.
    records = [
        {k: v for k, v in r.items() if k not in ("bbox", "segmentation")}
        for r in merged.detections
        if "keypoints" in r
    ]
    if not records:
        return CocoStats.zeros(KEYPOINT_STAT_NAMES)
    values = _summary(
        coco_gt, records, "keypoints", merged.image_ids, backend=backend, sigmas=sigmas
    )
    return CocoStats(values, KEYPOINT_STAT_NAMES)


def run_cocoeval(
    coco_gt: COCO,
    merged: ShardResult,
    *,
    sigmas: Sequence[float] | None = None,
    coco_backend: CocoBackend | None = None,
) -> EvalResult:
    """COCOeval for "bbox" and "segm" over the images in ``merged``, and "keypoints" (OKS)
    when the dataset has keypoints; no detections -> zeros.

    Args:
        coco_gt: the ground truth (pycocotools).
        merged: every image's detections (:func:`merge_shards`).
        sigmas: per-keypoint OKS sigmas (default: see :func:`keypoint_sigmas`).
        coco_backend: ``"pycocotools"`` or ``"faster"`` (None: :func:`default_coco_backend`).

    Returns:
        The numbers, with their :class:`EvalTiming` (``merged``'s inference time and each
        COCOeval part's).
    """
    backend = check_coco_backend(coco_backend)
    n_det = len(merged.detections)
    kp_sigmas = keypoint_sigmas(coco_gt, sigmas)
    kp = None if kp_sigmas is None else CocoStats.zeros(KEYPOINT_STAT_NAMES)
    seconds: dict[str, float] = {}

    def timing() -> EvalTiming:
        return EvalTiming(
            num_images=len(merged.image_ids),
            inference_seconds=merged.inference_seconds,
            load_seconds=merged.load_seconds,
            cocoeval_seconds=seconds,
            backend=backend,
        )

    if n_det == 0:
        zeros = CocoStats.zeros()
        return EvalResult(zeros, zeros, len(merged.image_ids), 0, kp, timing())
    if kp_sigmas is not None:
        _fill_num_keypoints(coco_gt)
    ground_truth: Any = coco_gt
    if backend == "faster":
        start = time.perf_counter()
        ground_truth = _faster_ground_truth(coco_gt)
        seconds["ground_truth"] = time.perf_counter() - start
    stats = {}
    for iou_type in ("bbox", "segm"):
        if iou_type == "segm" and "segmentation" not in merged.detections[0]:
            stats[iou_type] = CocoStats.zeros()
            continue
        start = time.perf_counter()
        # Copies, as loadRes adds keys in place. For "segm" without "bbox", loadRes takes each
        # detection's area from its mask, not its box.
        drop = ("bbox" if iou_type == "segm" else "segmentation", "keypoints")
        records = [{k: v for k, v in r.items() if k not in drop} for r in merged.detections]
        values = _summary(ground_truth, records, iou_type, merged.image_ids, backend=backend)
        stats[iou_type] = CocoStats(values)
        seconds[iou_type] = time.perf_counter() - start
    if kp_sigmas is not None:
        start = time.perf_counter()
        kp = _keypoint_stats(ground_truth, merged, kp_sigmas, backend=backend)
        seconds["keypoints"] = time.perf_counter() - start
    return EvalResult(stats["bbox"], stats["segm"], len(merged.image_ids), n_det, kp, timing())


def save_outputs(out_dir: str | Path, merged: ShardResult, result: EvalResult) -> None:
    """Writes ``results.json`` (COCO results), ``metrics.json`` and ``ap_table.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(merged.detections))
    (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    (out / "ap_table.md").write_text(result.table())


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def evaluate_coco(
    model: Any,
    data: Any,
    *,
    categories: Any = None,
    out_dir: str | Path | None = None,
    max_images: int | None = None,
    progress: bool = True,
    keypoint_sigmas: Sequence[float] | None = None,
    coco_backend: CocoBackend | None = None,
) -> EvalResult:
    """COCO box and mask AP of ``model`` on a dataset.

    Args:
        model: a :class:`~maskrcnn.modeling.MaskRCNN` (or any module with ``detect`` and
            ``cfg``); run in eval mode, then put back in its mode.
        data: ``(ann_file, image_dir)`` or a dataset of samples (``image``, ``image_id``) with
            ``coco`` or ``ann_file`` (see :func:`open_source`).
        categories: how labels map to COCO ids: None (by the model's category names, else
            labels 1..K by sorted id), a mapping label -> COCO id, a :class:`LabelMap`, or a
            CategoryMap-like object with ``names_by_label``.
        out_dir: if given, rank 0 writes results.json, metrics.json and ap_table.md there.
        max_images: evaluate only the first N images.
        progress: progress bar and the final table on stdout (rank 0).
        keypoint_sigmas: per-keypoint OKS sigmas for a keypoint dataset (default: COCO's for
            17 keypoints, else :data:`DEFAULT_KEYPOINT_SIGMA` each).
        coco_backend: ``"pycocotools"`` or ``"faster"`` (None: :func:`default_coco_backend`).

    Returns:
        The same :class:`EvalResult` on every rank, its ``timing`` included (with
        ``progress``, its summary is printed after the table).
    """
    if max_images is not None and (isinstance(max_images, bool) or max_images < 1):
        raise ValueError(f"max_images: must be at least 1 (got {max_images!r})")
    backend = check_coco_backend(coco_backend)
    source = open_source(data)
    label_map = resolve_label_map(
        categories,
        source.coco.loadCats(source.coco.getCatIds()),
        tuple(getattr(model.cfg, "category_names", ())),
    )
    count = len(source) if max_images is None else min(len(source), max_images)
    rank, world = _world()
    shard = evaluate_shard(
        model,
        source,
        shard_indices(count, rank, world),
        label_map,
        progress=progress and rank == 0,
    )
    gathered: list[Any] = [shard]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, shard)
    result: EvalResult | None = None
    if rank == 0:
        merged = merge_shards(gathered)
        result = run_cocoeval(source.coco, merged, sigmas=keypoint_sigmas, coco_backend=backend)
        if out_dir is not None:
            save_outputs(out_dir, merged, result)
        if progress:
            print(result.table(), end="")
            if result.timing is not None:
                print(result.timing.summary(), end="")
    if world > 1:
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    assert result is not None
    return result
