"""Decoding uploads and writing detections as COCO results records."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from serve_checks import assert_records_match, expected_records, rle_to_mask

from maskrcnn.serve.predictor import (
    ImageDecodeError,
    ImageTooLargeError,
    Predictor,
    category_table,
    decode_image,
)


def _encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_decode_applies_exif_orientation_and_converts_modes():
    img = Image.new("RGB", (30, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = decode_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert rotated.shape == (3, 30, 20)
    gray = decode_image(_encode(Image.new("L", (7, 5), 128)))
    assert gray.shape == (3, 5, 7) and torch.allclose(gray, torch.full_like(gray, 128 / 255))
    rgba = decode_image(_encode(Image.new("RGBA", (4, 3), (0, 0, 255, 10))))
    assert rgba.shape == (3, 3, 4) and rgba[2].eq(1).all()


def test_decode_refuses_non_images_and_huge_ones():
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"GIF89a? no, just text")
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="cannot be decoded"):
        noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
        data = _encode(noise)
        decode_image(data[: len(data) // 2])  # truncated PNG
    with pytest.raises(ImageTooLargeError, match="100 x 100 pixels"):
        decode_image(_encode(Image.new("RGB", (100, 100))), max_pixels=9999)


def test_predictions_are_coco_results_of_the_eager_model(tiny_model, upload):
    data, image = upload
    predictor = Predictor(model=tiny_model, name="tiny")
    result = predictor.predict(decode_image(data), score_thresh=0.3, image_id=17)
    assert (result.height, result.width) == tuple(image.shape[-2:])
    assert result.detections, "the test needs detections"
    assert {r["image_id"] for r in result.detections} == {17}
    assert_records_match(result.detections, expected_records(tiny_model, image, 0.3))
    for record in result.detections:
        mask = rle_to_mask(record["segmentation"])
        assert mask.shape == tuple(image.shape[-2:]) and record["area"] == int(mask.sum())
        assert record["score"] >= 0.3 and len(record["bbox"]) == 4
    scores = [r["score"] for r in result.detections]
    assert scores == sorted(scores, reverse=True)
    assert predictor.predict(image, score_thresh=1.0).detections == []


def test_metadata_lists_named_classes_only(tiny_model):
    meta = Predictor(model=tiny_model, name="tiny.safetensors").metadata()
    assert meta["classes"] == [{"id": 1, "name": "square"}, {"id": 2, "name": "bar"}]
    assert (meta["model"], meta["backend"], meta["precision"]) == (
        "tiny.safetensors",
        "torch",
        "fp32",
    )
    assert category_table(("", "a", "N/A", "b")) == [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]
    assert np.isfinite(meta["mask_threshold"])
