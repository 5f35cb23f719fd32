"""Every weights loader turns a corrupt or incomplete file into one line naming the file."""

from __future__ import annotations

import pytest
import torch

from maskrcnn import build_model, from_detectron2, from_pretrained, from_torchvision, preset
from maskrcnn.weights.pretrained import load_imagenet_backbone


@pytest.fixture
def corrupt(tmp_path):
    files = {}
    for suffix in (".safetensors", ".pth", ".pkl"):
        path = tmp_path / f"broken{suffix}"
        path.write_bytes(b"\x00\x01 definitely not weights " * 8)
        files[suffix] = path
    return files


def _one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    message = str(err.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pkl"])
def test_from_pretrained_names_a_corrupt_file(corrupt, suffix):
    with pytest.raises(ValueError) as err:
        from_pretrained(corrupt[suffix])
    _one_line_naming(err, corrupt[suffix])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_from_torchvision_and_detectron2_name_a_corrupt_file(corrupt, suffix):
    for loader in (from_torchvision, from_detectron2):
        with pytest.raises(ValueError) as err:
            loader(corrupt[suffix])
        _one_line_naming(err, corrupt[suffix])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_imagenet_backbone_names_a_corrupt_file(corrupt, suffix):
    model = build_model(preset("r18_fpn", num_classes=3))
    with pytest.raises(ValueError) as err:
        load_imagenet_backbone(model, corrupt[suffix])
    _one_line_naming(err, corrupt[suffix])


def test_torchvision_file_without_class_scores_names_the_key(tmp_path):
    path = tmp_path / "partial.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match=r"partial\.pth.*'roi_heads\.box_predictor\.cls_score"):
        from_pretrained(path)
    with pytest.raises(ValueError, match="cls_score.weight"):
        from_torchvision(path)


def test_detectron2_weights_without_class_scores_name_the_key():
    with pytest.raises(
        ValueError, match="detectron2 weights: .*lacks the predictors.*cls_score.weight"
    ):
        from_detectron2({"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7)})
