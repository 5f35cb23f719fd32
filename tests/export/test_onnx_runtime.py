"""OnnxMaskRCNN: loading, and ``predict_folder`` giving the eager model's JSON and overlays."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx_parity import BOX_ATOL, MASK_MIN_IOU, textured_image
from PIL import Image
from serve_checks import rle_to_mask

from maskrcnn.evaluation.predict import predict_folder
from maskrcnn.export import OnnxMaskRCNN


def _mask_iou(a: dict, b: dict) -> float:
    x, y = rle_to_mask(a), rle_to_mask(b)
    union = (x | y).sum()
    return 1.0 if union == 0 else float((x & y).sum() / union)


def test_predict_folder_with_onnx_gives_the_eager_json_and_overlays(
    small_model, small_runtime, tmp_path
):
    images = tmp_path / "images"
    images.mkdir()
    for i, size in enumerate([(143, 211), (230, 121)]):
        array = textured_image(*size, seed=40 + i).permute(1, 2, 0).numpy()
        Image.fromarray(array).save(images / f"photo{i}.png")
    kwargs = dict(score_thresh=0.5, num_workers=0, progress=False)
    eager = predict_folder(small_model, [images], tmp_path / "eager", **kwargs)
    onnx = predict_folder(small_runtime, [images], tmp_path / "onnx", **kwargs)
    eager_records = json.loads(eager.json_path.read_text())
    onnx_records = json.loads(onnx.json_path.read_text())
    assert sum(len(r["boxes"]) for r in eager_records) > 0
    for e, o in zip(eager_records, onnx_records, strict=True):
        assert (e["height"], e["width"]) == (o["height"], o["width"])
        assert e["labels"] == o["labels"] and e["categories"] == o["categories"]
        # JSON rounds boxes to 0.01 px and scores to 1e-4: one rounding step either way.
        np.testing.assert_allclose(e["boxes"], o["boxes"], atol=BOX_ATOL + 0.01, rtol=0)
        np.testing.assert_allclose(e["scores"], o["scores"], atol=2e-4, rtol=0)
        assert all(_mask_iou(a, b) >= MASK_MIN_IOU for a, b in zip(e["masks"], o["masks"]))
    for a, b in zip(eager.overlays, onnx.overlays, strict=True):
        assert a.name == b.name
        with Image.open(a) as x, Image.open(b) as y:
            diff = np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16))
        assert (diff.max(axis=-1) > 8).mean() < 0.002  # a few mask-edge pixels at most


def test_non_maskrcnn_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        OnnxMaskRCNN(tmp_path / "nowhere.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="junk.onnx"):
        OnnxMaskRCNN(junk)
