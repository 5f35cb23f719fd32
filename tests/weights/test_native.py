"""Our own model files: safetensors with the configuration in the header."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from maskrcnn import build_model, load_model, preset, save_model
from maskrcnn.weights.native import check_finite, nonfinite_entries, read_config


def test_save_load_round_trip(tmp_path):
    cfg = preset("r18_fpn", num_classes=4).replace(category_names=("bg", "a", "b", "c"))
    cfg = cfg.replace(input=dataclasses.replace(cfg.input, min_size=(64,), max_size=96))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = save_model(model, tmp_path / "model.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left
    loaded = load_model(path)
    assert loaded.cfg == cfg
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    image = torch.rand(3, 60, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded([image])[0]["boxes"], model([image])[0]["boxes"])


def test_not_a_model_file_is_named(tmp_path):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="weights.safetensors"):
        read_config(bad)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_model(tmp_path / "missing.safetensors")


def test_model_files_carry_the_inference_precision(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    cfg = preset("r18_fpn", num_classes=2)
    model = build_model(cfg).set_precision("bf16")
    path = save_model(model, tmp_path / "bf16.safetensors")
    assert read_config(path).precision == "bf16" and load_model(path).cfg.precision == "bf16"
    # A file written before the field existed loads with fp32.
    data = cfg.to_dict()
    del data["precision"]
    old = tmp_path / "old.safetensors"
    metadata = {"format": "maskrcnn/1", "config": json.dumps(data)}
    save_file(load_file(str(path)), str(old), metadata=metadata)
    assert load_model(old).cfg == cfg


def test_a_model_with_non_finite_weights_is_never_written(tmp_path):
    model = build_model(preset("r18_fpn", num_classes=3))
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    target = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match="refusing to write .*non-finite.*backbone"):
        save_model(model, target)
    assert not list(tmp_path.iterdir())


def test_non_finite_optimizer_state_is_named():
    tree = {
        "model": {"w": torch.ones(2)},
        "optimizer": {"state": {3: {"m": torch.tensor([1.0, float("inf")])}}},
    }
    assert nonfinite_entries(tree) == ["optimizer.state.3.m"]
    with pytest.raises(ValueError, match="last.ckpt: the training state .* optimizer.state.3.m"):
        check_finite(tree, what="the training state", path="run/last.ckpt")


def test_absurd_configuration_in_metadata_is_refused_before_allocation(tmp_path, monkeypatch):
    import json

    from safetensors.torch import load_file, save_file

    from maskrcnn.weights import native

    cfg = preset("r18_fpn", num_classes=3)
    path = save_model(build_model(cfg), tmp_path / "model.safetensors")
    config = cfg.to_dict()
    config["box_head"]["fc_dim"] = 200_000  # fc6 alone: 12544 x 200000 floats, 10 GB
    absurd = tmp_path / "absurd.safetensors"
    metadata = {"format": native.FORMAT, "config": json.dumps(config)}
    save_file(load_file(str(path)), str(absurd), metadata=metadata)
    built_on: list[str] = []

    def spy_build_model(c):
        built_on.append(torch.empty(()).device.type)
        return build_model(c)

    monkeypatch.setattr(native, "build_model", spy_build_model)
    with pytest.raises(ValueError, match=r"absurd.safetensors: its tensors do not fit") as err:
        load_model(absurd)
    assert "GB" in str(err.value) and "box_head" in str(err.value)
    assert built_on == ["meta"]  # only ever built without memory
    assert isinstance(load_model(path), torch.nn.Module)  # a good file still loads
