"""Helpers of the serving tests: upload bytes, and the eager model's answer to compare with."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from maskrcnn.evaluation.results import encode_binary_mask


def png_bytes(image: torch.Tensor) -> bytes:
    """[3, H, W] float in [0, 1] -> PNG file bytes (8-bit, so it decodes to the same floats)."""
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def rle_to_mask(rle: dict) -> np.ndarray:
    """A COCO compressed RLE (``counts`` a str, as the server sends it) -> [H, W] bool."""
    with warnings.catch_warnings():  # pycocotools' decode warns under numpy 2 (copy keyword)
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()}) > 0


def expected_records(model, image: torch.Tensor, score_thresh: float) -> list[dict]:
    """What /predict should say, from ``model.predict`` (pasted boolean masks)."""
    result = model.predict(image)
    records = []
    for i in range(len(result)):
        if float(result.scores[i]) < score_thresh:
            continue
        x0, y0, x1, y1 = result.boxes[i].tolist()
        records.append(
            {
                "category_id": int(result.labels[i]),
                "category_name": result.category_names[i],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(result.scores[i]),
                "segmentation": encode_binary_mask(result.masks[i].numpy()),
            }
        )
    return records


def assert_records_match(got: list[dict], expected: list[dict]) -> None:
    """Same detections in the same order: names, ids, boxes to 0.01 px, scores, exact RLE."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g["category_id"] == e["category_id"]
        assert g["category_name"] == e["category_name"]
        np.testing.assert_allclose(g["bbox"], e["bbox"], atol=0.011)
        assert abs(g["score"] - e["score"]) <= 6e-5
        assert g["segmentation"] == e["segmentation"]
