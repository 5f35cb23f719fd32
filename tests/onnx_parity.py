"""Comparing an exported graph's detections with the eager model's: images, matching, tolerances.

Detections are matched one to one by label and box IoU (not by position, since equal-scored
detections may come out in either order). Every eager detection must have its ONNX twin and
vice versa, except those whose score lies within ``SCORE_MARGIN`` of a cut-off (the score
threshold, or the lowest kept score when the per-image cap was reached): a 1e-6 difference
in a score there decides whether it is kept, in either implementation.

Tolerances (the measured maxima on the tests' images are about 100 times smaller, see the
README): box corners within ``BOX_ATOL`` pixels, scores within ``SCORE_ATOL``, RoI-frame mask
probabilities within ``MASK_PROB_ATOL``, and the pasted binary masks' IoU at least
``MASK_MIN_IOU``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from maskrcnn.evaluation.results import paste_function
from maskrcnn.structures import Instances

BOX_ATOL = 0.05  # pixels
SCORE_ATOL = 1e-4
MASK_PROB_ATOL = 1e-3
MASK_MIN_IOU = 0.98
SCORE_MARGIN = 1e-3


def textured_image(height: int, width: int, seed: int) -> Tensor:
    """[3, H, W] uint8: smooth colour blobs (upsampled 5x5 noise) plus a little fine noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 5, 5, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0]
    image = 0.85 * smooth + 0.15 * torch.rand(3, height, width, generator=gen)
    return (image * 255).round().to(torch.uint8)


@dataclass(frozen=True)
class Parity:
    """What matching found: counts and the largest differences over matched pairs."""

    num_eager: int
    num_onnx: int
    num_matched: int
    max_box_diff: float
    max_score_diff: float
    max_mask_prob_diff: float
    min_mask_iou: float


def _near_cutoff(scores: Tensor, cutoffs: list[float]) -> Tensor:
    near = torch.zeros_like(scores, dtype=torch.bool)
    for c in cutoffs:
        near |= (scores - c).abs() <= SCORE_MARGIN
    return near


def compare_detections(
    eager: Instances,
    onnx: Instances,
    *,
    score_thresh: float,
    max_detections: int,
    paste: str,
    mask_threshold: float = 0.5,
) -> Parity:
    """Matches detections (RoI-frame masks, [N, 1, M, M]) and asserts the tolerances."""
    cutoffs = [score_thresh]
    for r in (eager, onnx):
        if len(r) >= max_detections:
            cutoffs.append(float(r.scores.min()))
    iou = box_iou(eager.boxes, onnx.boxes) if len(eager) and len(onnx) else None
    matched_e, matched_o = [], []
    if iou is not None:
        iou = torch.where(eager.labels[:, None] == onnx.labels[None], iou, 0)
        for i in range(len(eager)):
            j = int(iou[i].argmax())
            if iou[i, j] > 0.99 and j not in matched_o:
                matched_e.append(i)
                matched_o.append(j)
    for r, matched, name in ((eager, matched_e, "eager"), (onnx, matched_o, "onnx")):
        unmatched = torch.ones(len(r), dtype=torch.bool)
        unmatched[matched] = False
        lonely = unmatched & ~_near_cutoff(r.scores, cutoffs)
        assert not lonely.any(), f"{name} detections without a twin: scores {r.scores[lonely]}"
    if not matched_e:
        return Parity(len(eager), len(onnx), 0, 0.0, 0.0, 0.0, 1.0)
    e, o = eager[torch.tensor(matched_e)], onnx[torch.tensor(matched_o)]
    box_diff = float((e.boxes - o.boxes).abs().max())
    score_diff = float((e.scores - o.scores).abs().max())
    prob_diff = float((e.masks - o.masks).abs().max())
    fn = paste_function(paste)
    ious = []
    for i in range(len(e)):
        a = fn(e.masks[i : i + 1], e.boxes[i : i + 1], e.image_size)[0, 0] >= mask_threshold
        b = fn(o.masks[i : i + 1], o.boxes[i : i + 1], o.image_size)[0, 0] >= mask_threshold
        union = (a | b).sum()
        ious.append(1.0 if union == 0 else float((a & b).sum() / union))
    parity = Parity(
        len(eager), len(onnx), len(matched_e), box_diff, score_diff, prob_diff, min(ious)
    )
    assert parity.max_box_diff <= BOX_ATOL, parity
    assert parity.max_score_diff <= SCORE_ATOL, parity
    assert parity.max_mask_prob_diff <= MASK_PROB_ATOL, parity
    assert parity.min_mask_iou >= MASK_MIN_IOU, parity
    return parity
