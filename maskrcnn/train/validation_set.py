"""Checking a run's validation set before the first step, so that its evaluation cannot fail
after hours of training: integer image ids (COCO evaluation needs them) and every image that
will be evaluated decoded once, at the size the annotation file gives."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from maskrcnn.data.coco import BadImageError, CocoDataset

_MAX_NAMED = 5


def check_validation_set(dataset: CocoDataset, *, max_images: int | None = None) -> None:
    """Raises one ``ValueError`` naming the validation set and its first offending images.

    Args:
        dataset: the validation set.
        max_images: only the first ``max_images`` images are evaluated, so only they are read.

    Raises:
        ValueError: an image id is not an integer, or an image cannot be decoded or has
            another size than the annotation file says.
    """
    where = f"validation set {dataset.ann_file}"
    not_ints = [i for i in dataset.image_ids if not isinstance(i, int) or isinstance(i, bool)]
    if not_ints:
        shown = ", ".join(repr(i) for i in not_ints[:_MAX_NAMED])
        raise ValueError(
            f"{where}: {len(not_ints)} image id(s) are not integers ({shown}); COCO evaluation "
            "needs integer ids: renumber the images (and their annotations' image_id)"
        )
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    indices = range(count)
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = [p for p in pool.map(lambda i: _problem(dataset, i), indices) if p is not None]
    if found:
        more = f", ... {len(found) - _MAX_NAMED} more" if len(found) > _MAX_NAMED else ""
        raise ValueError(
            f"{where}: {len(found)} image(s) cannot be evaluated: "
            + "; ".join(found[:_MAX_NAMED])
            + more
        )


def _problem(dataset: CocoDataset, index: int) -> str | None:
    try:
        dataset.read_image(index)
    except BadImageError as err:
        return str(err)
    return None
