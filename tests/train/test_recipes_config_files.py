"""Recipes resolve to complete configurations; config files round-trip through --print-config;
bad keys and types in a file are errors that name the key."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from maskrcnn.cli import build_parser
from maskrcnn.cli.train import build_config
from maskrcnn.train.config import TrainConfig
from maskrcnn.train.config_file import read_config_file
from maskrcnn.train.recipes import RECIPES, recipe


def _data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "train.json").write_text("{}")
    return root


def _config(argv: list[str]) -> TrainConfig:
    args = build_parser().parse_args(["train", *argv])
    cfg, _ = build_config(args)
    return cfg


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_resolves_to_a_complete_config(name: str, tmp_path: Path) -> None:
    rec = recipe(name)
    cfg = _config(["--recipe", name, "--data", str(_data(tmp_path)), "--out", str(tmp_path)])
    assert cfg.optim == rec.optim
    assert cfg.schedule == rec.schedule
    assert cfg.data.batch_size == rec.batch_size
    assert cfg.runtime.precision == rec.precision
    model = cfg.model.model_config(num_classes=3)  # every model setting resolves
    assert model.num_classes == 3
    for key, value in rec.model.overrides.items():
        node = model
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value, key


def test_paper_recipes_decay_at_the_papers_steps() -> None:
    assert recipe("1x").schedule.milestones() == (60_000, 80_000)
    assert recipe("3x").schedule.milestones() == (210_000, 250_000)
    assert recipe("1x").schedule.max_iter == 90_000
    with pytest.raises(ValueError, match="cpu-small"):
        recipe("2x")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_print_config_round_trips(suffix: str, tmp_path: Path) -> None:
    argv = [
        "--recipe", "cpu-small", "--data", str(_data(tmp_path)), "--out", str(tmp_path / "run"),
        "--lr", "3e-4", "--max-minutes", "7", "--set", "rpn.nms_thresh=0.6",
        "--train-set", "schedule.warmup_iters=20",
    ]  # fmt: skip
    first = _config(argv)
    args = build_parser().parse_args(["train", *argv, "--print-config"])
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert args.func(args) == 0
    path = tmp_path / f"printed{suffix}"
    if suffix == ".json":
        import yaml

        path.write_text(json.dumps(yaml.safe_load(text.getvalue())))
    else:
        path.write_text(text.getvalue())
    again = _config(["--config", str(path)])
    assert again == first
    assert again.model.overrides["rpn.nms_thresh"] == 0.6
    assert again.schedule.warmup_iters == 20


def test_toml_file_and_flags_on_top(tmp_path: Path) -> None:
    data = _data(tmp_path)
    path = tmp_path / "c.toml"
    path.write_text(
        f'out_dir = "{tmp_path / "run"}"\n[data]\ntrain_ann = "{data / "train.json"}"\n'
        f'train_images = "{data / "images"}"\nbatch_size = 4\n[optim]\nkind = "adamw"\n'
    )
    cfg = _config(["--config", str(path), "--batch-size", "2"])
    assert cfg.optim.kind == "adamw"
    assert cfg.data.batch_size == 2  # the flag is above the file
    assert cfg.out_dir == str(tmp_path / "run")


def test_unknown_key_names_it_and_the_allowed_ones(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"out_dir: {tmp_path}\noptim:\n  lrr: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*lrr.*allowed.*base_lr"):
        _config(["--config", str(path), "--data", str(_data(tmp_path))])
    path.write_text("optimiser:\n  kind: sgd\n")  # no section, and no old flat field either
    with pytest.raises(ValueError, match=r"bad\.yaml.*optimiser.*sections.*optim"):
        read_config_file(path)
    path.write_text("optim:\n  kind: sgd\nschedulr:\n  max_iter: 5\n")
    with pytest.raises(ValueError, match=r"unknown section.*schedulr.*allowed.*schedule"):
        read_config_file(path)


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"out_dir: {tmp_path}\ndata:\n  batch_size: many\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*batch_size.*must be"):
        _config(["--config", str(path), "--data", str(_data(tmp_path))])
    path.write_text(f"out_dir: {tmp_path}\noptim:\n  kind: lion\n")
    with pytest.raises(ValueError, match=r"kind.*sgd"):
        _config(["--config", str(path), "--data", str(_data(tmp_path))])


def test_unknown_config_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_text("[x]\n")
    with pytest.raises(ValueError, match=r"c\.ini.*unknown configuration format"):
        read_config_file(path)
