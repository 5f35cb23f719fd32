"""The matcher and the balanced sampler as small pure units; the RPN and RoI target builders."""

from __future__ import annotations

import torch

from maskrcnn.modeling.sampling import (
    BACKGROUND,
    FOREGROUND,
    IGNORED,
    label_anchors,
    label_proposals,
    match_boxes,
    sample_balanced,
)


def test_thresholds_split_foreground_ignored_background():
    # One ground-truth box; IoU exactly at ``high`` is foreground, exactly at ``low`` ignored.
    iou = torch.tensor([[0.9, 0.7, 0.69, 0.3, 0.29, 0.0]])
    matches = match_boxes(iou, high=0.7, low=0.3, allow_low_quality=False)
    assert matches.labels.dtype == torch.int8 and matches.indices.dtype == torch.int64
    fg, ig, bg = FOREGROUND, IGNORED, BACKGROUND
    assert matches.labels.tolist() == [fg, fg, ig, ig, bg, bg]
    assert matches.foreground.tolist() == [True, True, False, False, False, False]


def test_each_prediction_takes_its_best_ground_truth():
    iou = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.8, 0.75]])
    matches = match_boxes(iou, high=0.5, low=0.3, allow_low_quality=False)
    assert matches.labels.tolist() == [FOREGROUND] * 3
    assert matches.indices.tolist() == [0, 1, 1]


def test_low_quality_matches_and_the_sampler():
    iou = torch.tensor([[0.9, 0.5, 0.2, 0.1], [0.1, 0.2, 0.25, 0.05]])
    plain = match_boxes(iou, high=0.7, low=0.3, allow_low_quality=False)
    assert plain.labels.tolist() == [FOREGROUND, IGNORED, BACKGROUND, BACKGROUND]
    assert plain.indices[0] == 0
    kept = match_boxes(iou, high=0.7, low=0.3, allow_low_quality=True)
    # Column 2 is gt 1's best prediction: foreground although its IoU is below ``high``.
    assert kept.labels.tolist() == [FOREGROUND, IGNORED, FOREGROUND, BACKGROUND]
    assert kept.indices[0] == 0 and kept.indices[2] == 1
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 5)
    torch.manual_seed(0)
    fg, bg = sample_balanced(labels, batch_size=16, positive_fraction=0.25)
    assert len(fg) == 4 and len(bg) == 12
    assert (labels[fg] == 1).all() and (labels[bg] == 0).all()


def test_low_quality_keeps_every_prediction_of_a_tie():
    # gt 0's best IoU (0.4) is shared by columns 1 and 3: both become foreground, matched to
    # their own best ground truth (column 3 overlaps gt 1 more).
    iou = torch.tensor([[0.1, 0.4, 0.2, 0.4], [0.0, 0.1, 0.0, 0.6]])
    matches = match_boxes(iou, high=0.7, low=0.3, allow_low_quality=True)
    assert matches.labels.tolist() == [BACKGROUND, FOREGROUND, BACKGROUND, FOREGROUND]
    assert matches.indices[1] == 0 and matches.indices[3] == 1


def test_indices_are_zero_where_not_foreground():
    iou = torch.tensor([[0.0, 0.1, 0.9], [0.2, 0.5, 0.1]])
    matches = match_boxes(iou, high=0.7, low=0.3, allow_low_quality=False)
    assert matches.labels.tolist() == [BACKGROUND, IGNORED, FOREGROUND]
    assert matches.indices.tolist() == [0, 0, 0]


def test_no_ground_truth_is_all_background():
    iou = torch.zeros(0, 5)
    for low_quality in (False, True):
        matches = match_boxes(iou, high=0.7, low=0.3, allow_low_quality=low_quality)
        assert matches.labels.tolist() == [BACKGROUND] * 5
        assert matches.indices.tolist() == [0] * 5
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]])
    labels, matched = label_anchors(anchors, torch.zeros(0, 4), high=0.7, low=0.3)
    assert labels.tolist() == [BACKGROUND] * 2 and torch.equal(matched, torch.zeros(2, 4))
    targets = label_proposals(
        anchors,
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.int64),
        fg_iou=0.5,
        bg_iou=0.5,
        batch_size=8,
        positive_fraction=0.25,
        box_coder_weights=(10.0, 10.0, 5.0, 5.0),
    )
    assert targets.labels.tolist() == [0, 0] and targets.matched_gt.tolist() == [0, 0]
    assert torch.equal(targets.regression_targets, torch.zeros(2, 4))


def test_label_anchors_and_proposals():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # gt 0 itself
            [0.0, 0.0, 10.0, 12.0],  # IoU 0.83 with gt 0
            [25.0, 25.0, 45.0, 45.0],  # IoU 0.39 with gt 1: ignored, but gt 1's best anchor
            [50.0, 50.0, 60.0, 60.0],  # overlaps nothing
        ]
    )
    labels, matched = label_anchors(anchors, gt, high=0.7, low=0.3)
    assert labels.tolist() == [FOREGROUND, FOREGROUND, FOREGROUND, BACKGROUND]
    assert torch.equal(matched, gt[[0, 0, 1, 0]])
    torch.manual_seed(0)
    targets = label_proposals(
        anchors,
        gt,
        torch.tensor([3, 5]),
        fg_iou=0.5,
        bg_iou=0.5,
        batch_size=16,
        positive_fraction=0.5,
        box_coder_weights=(10.0, 10.0, 5.0, 5.0),
    )
    # The ground-truth boxes join the proposals: 4 foreground (2 anchors + 2 gt), 2 background.
    assert targets.labels[:4].sort().values.tolist() == [3, 3, 3, 5]
    assert targets.labels[4:].tolist() == [0, 0]
    assert torch.equal(targets.labels[:4], torch.tensor([3, 5])[targets.matched_gt[:4]])
    assert targets.matched_gt[4:].tolist() == [0, 0]
    assert sorted(targets.proposals[4:].tolist()) == sorted(anchors[2:].tolist())
