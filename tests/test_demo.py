"""The demo end to end at a tiny size: data, training, evaluation, pictures."""

from __future__ import annotations

import dataclasses

import pytest

from maskrcnn.demo import DemoSettings, run_demo
from maskrcnn.train.config import ScheduleConfig
from maskrcnn.train.recipes import CPU_SMALL


def test_tiny_demo_writes_everything(tmp_path):
    recipe = dataclasses.replace(
        CPU_SMALL, batch_size=2, schedule=ScheduleConfig(max_iter=3, warmup_iters=1)
    )
    settings = DemoSettings(
        train_images=8, val_images=3, recipe=recipe, max_minutes=3, grid_images=2, workers=0
    )
    result = run_demo(tmp_path / "demo", settings)
    assert result.iterations == 3
    assert 0.0 <= result.box_ap <= 1.0 and 0.0 <= result.mask_ap <= 1.0
    for path in (result.model, result.grid, result.curves):
        assert path.is_file() and path.stat().st_size > 0
    assert result.grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_scales_the_schedule():
    default = DemoSettings()
    assert default.recipe is CPU_SMALL and default.recipe.schedule.fit_to_budget
    assert DemoSettings.for_budget(default.max_minutes) == default
    longer = DemoSettings.for_budget(3 * default.max_minutes)
    assert longer.recipe.schedule.max_iter == 3 * 750
    assert longer.max_minutes == 3 * default.max_minutes
    assert DemoSettings.for_budget(0.01).recipe.schedule.max_iter == 50 + 1
    with pytest.raises(ValueError, match="positive"):
        DemoSettings.for_budget(0)
