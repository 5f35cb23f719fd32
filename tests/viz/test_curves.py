"""Training curves from metrics.jsonl."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from maskrcnn.viz.curves import plot_curves


def test_plot_curves_writes_a_png(tmp_path):
    lines = [
        {"iter": i, "loss_total": 3.0 / (i + 1), "loss_mask": 0.7 / (i + 1), "lr": 0.01}
        for i in range(0, 50, 10)
    ]
    lines.append({"iter": 50, "bbox_AP": 0.1, "segm_AP": 0.08})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = plot_curves(metrics, tmp_path / "curves.png")
    with Image.open(out) as png:
        assert png.size == (1200, 400)  # two panels: losses and AP
    metrics.write_text(json.dumps(lines[0]) + "\n")
    with Image.open(plot_curves(metrics, tmp_path / "losses.png")) as png:
        assert png.size == (600, 400)
    metrics.write_text(json.dumps(lines[0]) + "\n{broken\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not JSON"):
        plot_curves(metrics, tmp_path / "bad.png")
