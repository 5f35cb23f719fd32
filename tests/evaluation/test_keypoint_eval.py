"""OKS keypoint AP beside box and mask AP: exact keypoints score 1.0, errors less, sigmas."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval
from torch import nn

from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.figures import FIGURE_OKS_SIGMA, write_figures_dataset
from maskrcnn.evaluation.coco_eval import (
    DEFAULT_KEYPOINT_SIGMA,
    KEYPOINT_STAT_NAMES,
    evaluate_coco,
    keypoint_sigmas,
)
from maskrcnn.evaluation.results import load_coco
from maskrcnn.structures import Instances


class GroundTruthKeypointModel(nn.Module):
    """Returns each image's ground truth (in evaluation order) with keypoints moved by
    ``shift`` pixels; unlabelled joints are predicted at the box centre."""

    def __init__(self, dataset: CocoDataset, shift: float = 0.0) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(
            mask_head=SimpleNamespace(paste="grid_sample", threshold=0.5),
            category_names=("__background__", "figure"),
        )
        self.dataset, self.shift, self.calls = dataset, shift, 0

    def detect(self, images: list[torch.Tensor], *, paste_masks: bool = True) -> list[Instances]:
        out = []
        for _ in images:
            gt = self.dataset.targets(self.calls)
            self.calls += 1
            kps = gt.keypoints.clone()
            centre = (gt.boxes[:, None, :2] + gt.boxes[:, None, 2:]) / 2
            kps[..., :2] = torch.where(kps[..., 2:] > 0, kps[..., :2] + self.shift, centre)
            kps[..., 2] = 1.0
            n = len(gt)
            out.append(
                Instances(
                    image_size=gt.image_size,
                    boxes=gt.boxes,
                    labels=gt.labels,
                    scores=torch.linspace(0.9, 0.5, n),
                    masks=None,
                    keypoints=kps,
                    keypoints_scores=torch.ones(n, kps.shape[1]),
                )
            )
        return out


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    return write_figures_dataset(
        tmp_path_factory.mktemp("figures"), train=0, val=5, seed=3, image_size=(96, 128)
    )


def test_exact_keypoints_score_one(figures, tmp_path):
    data = (figures.val_ann, figures.image_dir)
    model = GroundTruthKeypointModel(CocoDataset(*data))
    result = evaluate_coco(model, data, out_dir=tmp_path, progress=False)
    assert result.keypoints is not None
    assert result.keypoints.ap == pytest.approx(1.0)
    assert result.bbox.ap == pytest.approx(1.0)
    assert result.keypoints.names == KEYPOINT_STAT_NAMES
    assert result.flat()["keypoints_AP"] == result.keypoints.ap
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics["keypoints"]) == list(KEYPOINT_STAT_NAMES)
    assert "| keypoints | 100.0 |" in result.table()
    records = json.loads((tmp_path / "results.json").read_text())
    assert all(len(r["keypoints"]) == 33 for r in records)


def test_moved_keypoints_score_less_and_sigmas_matter(figures):
    data = (figures.val_ann, figures.image_dir)
    dataset = CocoDataset(*data)
    moved = evaluate_coco(GroundTruthKeypointModel(dataset, shift=2.0), data, progress=False)
    assert moved.keypoints is not None and 0.0 < moved.keypoints.ap < 1.0
    assert moved.bbox.ap == pytest.approx(1.0)
    loose = evaluate_coco(
        GroundTruthKeypointModel(dataset, shift=2.0),
        data,
        progress=False,
        keypoint_sigmas=[0.5] * 11,
    )
    assert loose.keypoints is not None and loose.keypoints.ap > moved.keypoints.ap


def test_sigmas_default_and_checks(figures):
    coco = load_coco(figures.val_ann)
    np.testing.assert_allclose(keypoint_sigmas(coco), np.full(11, FIGURE_OKS_SIGMA))
    np.testing.assert_allclose(keypoint_sigmas(coco, [0.2] * 11), np.full(11, 0.2))
    coco.dataset["categories"][0]["keypoint_sigmas"] = [0.1, -1]
    with pytest.raises(ValueError, match=r"category 1 \('figure'\): keypoint_sigmas: expected 11"):
        keypoint_sigmas(coco)
    del coco.dataset["categories"][0]["keypoint_sigmas"]
    np.testing.assert_allclose(keypoint_sigmas(coco), np.full(11, DEFAULT_KEYPOINT_SIGMA))
    with pytest.raises(ValueError, match="expected 11 positive numbers"):
        keypoint_sigmas(coco, [0.1] * 3)
    coco.dataset["categories"][0]["keypoints"] = [f"k{i}" for i in range(17)]
    reference = COCOeval(iouType="keypoints").params.kpt_oks_sigmas
    np.testing.assert_allclose(keypoint_sigmas(coco), reference)
    coco.dataset["categories"][0].pop("keypoints")
    assert keypoint_sigmas(coco) is None
