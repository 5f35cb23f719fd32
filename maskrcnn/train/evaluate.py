"""A run's COCO evaluation at a step: results under ``eval/``, a row in ``metrics.jsonl``."""

from __future__ import annotations

import logging
import time

from maskrcnn.evaluation.coco_eval import EvalResult, evaluate_coco
from maskrcnn.train.build import TrainRun

logger = logging.getLogger("maskrcnn.train")


def evaluate_run(run: TrainRun, iteration: int) -> EvalResult | None:
    """Evaluates ``run.model`` on the validation set (None without one), on every rank.

    Rank 0 writes ``eval/iter_XXXXXXX/`` (results, metrics, AP table) and an ``"eval"`` row of
    ``metrics.jsonl``. ``evaluate_coco`` leaves the model in the mode it found it in.
    """
    if run.val_set is None:
        return None
    main = run.dist.is_main
    out = run.run_dir / "eval" / f"iter_{iteration:07d}"
    result = evaluate_coco(
        run.model,
        run.val_set,
        categories=run.categories,
        out_dir=out if main else None,
        max_images=run.cfg.eval.max_images,
        progress=run.cfg.log.progress and main,
    )
    if main:
        run.metrics.write({"type": "eval", "iter": iteration, **result.flat()})
        ap = f"bbox AP {100 * result.bbox.ap:.1f}, segm AP {100 * result.segm.ap:.1f}"
        if result.keypoints is not None:
            ap += f", keypoints AP {100 * result.keypoints.ap:.1f}"
        logger.info(f"step {iteration}: {ap}")
    return result


def time_evaluation(run: TrainRun, images: int) -> float:
    """Seconds an evaluation of the first ``images`` validation images takes (nothing is
    written; the model is left in its mode). Used to estimate evaluation times."""
    if run.val_set is None:
        return 0.0
    start = time.monotonic()
    evaluate_coco(
        run.model,
        run.val_set,
        categories=run.categories,
        out_dir=None,
        max_images=images,
        progress=False,
    )
    return time.monotonic() - start


def evaluation_images(run: TrainRun) -> int:
    """How many images one evaluation of the run covers."""
    if run.val_set is None:
        return 0
    limit = run.cfg.eval.max_images
    return len(run.val_set) if limit is None else min(limit, len(run.val_set))
