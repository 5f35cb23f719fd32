"""Tests for the RoI-operator explainer figure (maskrcnn.viz.roi_explainer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from maskrcnn.ops import roi_align, roi_pool, roi_warp
from maskrcnn.viz import roi_explainer as explain

NAMES = ("RoIPool", "RoIAlign", "RoIWarp")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> explain.RoIExplainResult:
    """One drawing, into a directory that does not exist yet."""
    out = tmp_path_factory.mktemp("explain") / "nested" / "roi_ops.png"
    return explain.draw_roi_ops(out)


def _operator_outputs(res: explain.RoIExplainResult) -> dict[str, torch.Tensor]:
    """Our operators, called independently on the example the figure reports."""
    x = torch.tensor(res.feature_map, dtype=torch.float32)[None, None]
    box = torch.tensor([[0.0, *res.roi]])
    scale, sr = res.spatial_scale, res.sampling_ratio
    return {
        "RoIPool": roi_pool(x, box, 2, scale)[0, 0],
        "RoIAlign": roi_align(x, box, 2, scale, sr, res.aligned)[0, 0],
        "RoIWarp": roi_warp(x, box, 2, scale, sr)[0, 0],
    }


def test_writes_a_png(result: explain.RoIExplainResult) -> None:
    path = Path(result.path)
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        assert 1200 <= im.width <= 4000 and 700 <= im.height <= 3000
        assert im.width > im.height  # three panels side by side
        # Not blank: a real drawing has many distinct colours.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 100


def test_example_is_the_documented_one(result: explain.RoIExplainResult) -> None:
    fmap = torch.tensor(result.feature_map)
    assert fmap.shape == (8, 8)
    assert fmap.unique().numel() == 64  # distinct values
    assert torch.equal(fmap, explain.feature_map()[0, 0])
    assert any(c % 1 for c in result.roi)  # float coordinates
    assert result.sampling_ratio == 2
    assert any(f"aligned={result.aligned}" in t for t in result.texts)


def test_pooled_numbers_come_from_the_operators(result: explain.RoIExplainResult) -> None:
    outputs = _operator_outputs(result)
    assert set(result.pooled) == set(NAMES) == set(result.pooled_text)
    for name in NAMES:
        expected = outputs[name]
        assert expected.shape == (2, 2)
        assert torch.equal(torch.tensor(result.pooled[name]), expected), name
        strings = [[f"{v:.3f}" for v in row] for row in expected.tolist()]
        assert result.pooled_text[name] == strings, name
        for s in (s for row in strings for s in row):
            assert s in result.texts, (name, s)  # written in the figure


def test_the_operators_differ_on_the_example(result: explain.RoIExplainResult) -> None:
    """The figure's point: the three operators disagree on a misaligned RoI."""
    pooled = {k: torch.tensor(v) for k, v in result.pooled.items()}
    assert not torch.allclose(pooled["RoIPool"], pooled["RoIAlign"])
    assert not torch.allclose(pooled["RoIWarp"], pooled["RoIAlign"])


def test_highlighted_max_cells_are_roi_pool_outputs(result: explain.RoIExplainResult) -> None:
    rounded = [int(torch.tensor(v).round()) for v in result.roi]  # no .5 coordinates here
    for ph in range(2):
        for pw in range(2):
            r, c = result.pool_argmax[ph][pw]
            assert result.feature_map[r][c] == result.pooled["RoIPool"][ph][pw]
            assert rounded[1] <= r <= rounded[3] and rounded[0] <= c <= rounded[2]


def test_bilinear_weights(result: explain.RoIExplainResult) -> None:
    s = result.sample
    fmap = result.feature_map
    assert len(s.weights) == len(s.neighbors) == 4
    assert sum(s.weights) == pytest.approx(1.0, abs=1e-12)
    assert all(0.0 <= w <= 1.0 for w in s.weights)
    rows = sorted({r for r, _ in s.neighbors})
    cols = sorted({c for _, c in s.neighbors})
    assert rows == [int(s.y), int(s.y) + 1] and cols == [int(s.x), int(s.x) + 1]
    value = sum(w * fmap[r][c] for w, (r, c) in zip(s.weights, s.neighbors))
    assert value == pytest.approx(s.value, abs=1e-9)
    # The operator agrees: a zero-size aligned RoI with one sample reads exactly that point.
    x = torch.tensor(fmap, dtype=torch.float64)[None, None]
    point = torch.tensor([[0.0, s.x + 0.5, s.y + 0.5, s.x + 0.5, s.y + 0.5]], dtype=torch.float64)
    sampled = roi_align(x, point, 1, 1.0, sampling_ratio=1, aligned=True)
    assert float(sampled) == pytest.approx(s.value, abs=1e-9)
    # The weights and the value are written in the figure.
    for w in s.weights:
        assert f"{w:.3f}" in result.texts
    assert any(t.endswith(f"= {s.value:.3f}") for t in result.texts)


def test_drawn_sample_points_are_the_operators(result: explain.RoIExplainResult) -> None:
    """Averaging the drawn sample points' bilinear values reproduces RoIAlign and RoIWarp."""
    fmap, sr = result.feature_map, result.sampling_ratio
    x1, y1, x2, y2 = result.roi
    off = 0.5 if result.aligned else 0.0
    align = explain.sample_grid((x1 - off, y1 - off), (x2 - x1, y2 - y1), 2, sr)
    qx, qy, qx2, qy2 = (int(torch.tensor(v).round()) for v in result.roi)
    warp = explain.sample_grid((qx, qy), (qx2 - qx + 1, qy2 - qy + 1), 2, sr)
    sample = explain.SAMPLE
    assert (result.sample.x, result.sample.y) == align[sample[0]][sample[1]][sample[2]]
    for name, grid in (("RoIAlign", align), ("RoIWarp", warp)):
        for ph in range(2):
            for pw in range(2):
                points = grid[ph][pw]
                assert len(points) == sr * sr
                mean = sum(explain.bilinear(fmap, *p).value for p in points) / len(points)
                assert mean == pytest.approx(result.pooled[name][ph][pw], abs=1e-4), name
