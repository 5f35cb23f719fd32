"""Setting a run up: the typed run, the shared precision resolver, the run folder, resuming."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from train_setup import one_thread, tiny_config, write_shapes

from maskrcnn.data.shapes import ShapesFiles
from maskrcnn.modeling import precision as precision_module
from maskrcnn.train.build import StartPoint, build_run
from maskrcnn.train.config import TrainConfig
from maskrcnn.train.distributed import DistInfo
from maskrcnn.train.resumable_data import DataPosition


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> ShapesFiles:
    return write_shapes(tmp_path_factory.mktemp("shapes"))


def test_a_new_run_is_built_typed_and_its_folder_prepared(
    tmp_path: Path, shapes: ShapesFiles
) -> None:
    cfg = tiny_config(shapes, tmp_path / "run", val=True)
    with one_thread():
        run = build_run(cfg)
    try:
        assert run.start == StartPoint() and run.dist == DistInfo()
        assert run.device == torch.device("cpu") and run.precision == "fp32"
        assert run.scaler is None and run.train_model is run.model  # one process: no DDP
        assert run.categories.names == ("circle", "square", "triangle", "star")
        assert run.model_cfg.num_classes == 5 and run.model.cfg == run.model_cfg
        assert run.model_cfg.fpn.out_channels == 64  # the overrides
        assert run.val_set is not None and len(run.train_set) == 8
        assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.001)  # warm-up
        assert run.data.position() == DataPosition(0, 0, run.data.batches_per_epoch)
        saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
        assert TrainConfig.from_dict(saved) == cfg
    finally:
        run.close()


def _bf16_cfg(shapes: ShapesFiles, out: Path, precision: str) -> TrainConfig:
    return tiny_config(shapes, out, {"runtime.precision": precision})


def test_precision_goes_through_the_shared_resolver(
    tmp_path: Path, shapes: ShapesFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: False)
    with one_thread(), pytest.warns(UserWarning, match="fp32 instead of bf16"):
        run = build_run(_bf16_cfg(shapes, tmp_path / "a", "bf16"))
    run.close()
    assert run.precision == "fp32" and run.scaler is None
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("error")
        run = build_run(_bf16_cfg(shapes, tmp_path / "b", "auto"))  # auto: fp32, silently
    run.close()
    assert run.precision == "fp32"
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: True)
    with one_thread():
        run = build_run(_bf16_cfg(shapes, tmp_path / "c", "auto"))
    run.close()
    assert run.precision == "bf16"
    with pytest.raises(ValueError, match="'fp16' needs CUDA"):
        build_run(_bf16_cfg(shapes, tmp_path / "d", "fp16"))


def _rewrite_train(shapes: ShapesFiles, root: Path, edit) -> ShapesFiles:
    import dataclasses

    data = json.loads(shapes.train_ann.read_text())
    edit(data)
    root.mkdir()
    train_ann = root / "train.json"
    train_ann.write_text(json.dumps(data))
    return dataclasses.replace(shapes, train_ann=train_ann)


def _all_crowd(data):
    for ann in data["annotations"]:
        ann["iscrowd"] = 1


def _all_degenerate(data):
    for ann in data["annotations"]:
        ann["bbox"] = [ann["bbox"][0], ann["bbox"][1], 0, 0]


def _no_annotations(data):
    data["annotations"] = []


@pytest.mark.parametrize(
    "edit, why",
    [(_all_crowd, "crowd"), (_all_degenerate, "degenerate"), (_no_annotations, "0 annotations")],
)
def test_a_training_set_without_usable_targets_warns_before_training(
    tmp_path: Path, shapes: ShapesFiles, edit, why
) -> None:
    files = _rewrite_train(shapes, tmp_path / "data", edit)
    cfg = tiny_config(files, tmp_path / "run")
    with pytest.warns(UserWarning, match=f"no usable training target.*{why}"):
        build_run(cfg).close()


def test_a_usable_training_set_does_not_warn(tmp_path: Path, shapes: ShapesFiles) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no usable training target")
        build_run(tiny_config(shapes, tmp_path / "run")).close()
