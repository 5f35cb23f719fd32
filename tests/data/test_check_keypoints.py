"""``maskrcnn data check`` reports bad keypoint annotations and keypoint categories."""

from __future__ import annotations

import json

from maskrcnn.data.annotations import Kind
from maskrcnn.data.check import check_dataset
from maskrcnn.data.figures import write_figures_dataset


def test_check_reports_bad_keypoints(tmp_path):
    files = write_figures_dataset(tmp_path, train=3, val=0, seed=0, image_size=(96, 128))
    data = json.loads(files.train_ann.read_text())
    data["annotations"][0]["keypoints"] = [1, 2, 3]
    files.train_ann.write_text(json.dumps(data))
    report = check_dataset(files.train_ann, files.image_dir, decode=False)
    bad = [p for p in report.issues if p.kind is Kind.BAD_KEYPOINTS]
    assert len(bad) == 1 and bad[0].subject.startswith("annotation 1 of image")
    assert report.has_errors
    data["categories"][0]["skeleton"] = [[0, 99]]
    files.train_ann.write_text(json.dumps(data))
    report = check_dataset(files.train_ann, files.image_dir, decode=False)
    assert any(p.kind is Kind.BAD_KEYPOINTS and p.subject == "categories" for p in report.issues)
