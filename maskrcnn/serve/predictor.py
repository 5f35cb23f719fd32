"""What the server does with one upload, without the web: decode, detect, encode as COCO results.

:func:`decode_image` turns uploaded bytes into the model's [3, H, W] input (EXIF orientation
applied, any PIL mode converted), refusing what is not an image or has too many pixels.
:class:`Predictor` runs a model (a :class:`~maskrcnn.modeling.MaskRCNN` or an exported graph,
:class:`~maskrcnn.export.onnx_runtime.OnnxMaskRCNN`) and returns detections in COCO's results
form, one mask pasted and run-length encoded at a time as ``maskrcnn predict`` does.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from maskrcnn.data.io import pil_to_tensor
from maskrcnn.evaluation.results import PLACEHOLDER_NAMES, encode_binary_mask, paste_function
from maskrcnn.structures import Instances

DEFAULT_MAX_PIXELS = 40_000_000  # about 7300 x 5500


class ImageDecodeError(ValueError):
    """The upload is not an image PIL can read (or it is truncated)."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than the server accepts."""


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """Uploaded bytes -> [3, H, W] float RGB in [0, 1] (EXIF orientation applied).

    Raises:
        ImageDecodeError: not an image, or a corrupt one.
        ImageTooLargeError: more than ``max_pixels`` pixels (checked before decoding).
    """
    if not data:
        raise ImageDecodeError("the upload is empty: send the image file's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > max_pixels:
                    raise ImageTooLargeError(
                        f"the image has {img.width} x {img.height} pixels; at most "
                        f"{max_pixels} are accepted"
                    )
                img.load()
                return pil_to_tensor(ImageOps.exif_transpose(img))
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(f"not an image PIL can read ({err})") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageDecodeError(f"the image cannot be decoded ({err})") from err


def category_table(names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The model's categories as ``[{"id": label, "name": name}]`` (placeholders left out)."""
    return [
        {"id": i, "name": n} for i, n in enumerate(names) if i > 0 and n not in PLACEHOLDER_NAMES
    ]


def coco_results(
    result: Instances,
    *,
    image_id: int,
    score_thresh: float,
    paste: str,
    mask_threshold: float,
) -> list[dict[str, Any]]:
    """Detections (RoI-frame masks [N, 1, M, M]) as COCO results records, best first.

    Each record: ``image_id``, ``category_id`` (the model's label), ``category_name``,
    ``bbox`` [x, y, w, h] in pixels, ``score``, ``segmentation`` (compressed RLE, ``counts``
    a str), ``area`` (mask pixels). Detections scoring below ``score_thresh`` are left out.
    """
    if result.scores is None or result.masks is None:
        raise ValueError("coco_results: detections need scores and masks")
    kept = result[result.scores >= score_thresh]
    assert kept.scores is not None and kept.masks is not None
    fn = paste_function(paste)
    records = []
    for i in range(len(kept)):
        plane = fn(kept.masks[i : i + 1].float(), kept.boxes[i : i + 1], kept.image_size)[0, 0]
        binary = (plane >= mask_threshold).numpy()
        x0, y0, x1, y1 = kept.boxes[i].tolist()
        records.append(
            {
                "image_id": image_id,
                "category_id": int(kept.labels[i]),
                "category_name": kept.category_names[i] if kept.category_names else "",
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "score": round(float(kept.scores[i]), 4),
                "segmentation": encode_binary_mask(binary),
                "area": int(binary.sum()),
            }
        )
    return records


@dataclass(frozen=True)
class Prediction:
    """One answer of :meth:`Predictor.predict`.

    Attributes:
        height, width: the image's size (after EXIF orientation).
        detections: COCO results records (see :func:`coco_results`).
        inference_ms: time in the model (pre-processing to RoI-frame masks).
        encode_ms: time pasting and encoding the masks.
    """

    height: int
    width: int
    detections: list[dict[str, Any]]
    inference_ms: float
    encode_ms: float


class Predictor:
    """Runs a model on decoded images; safe to call from one worker thread at a time.

    Args (keyword-only):
        model: ``MaskRCNN`` (put in eval mode here) or ``OnnxMaskRCNN``: anything with ``cfg``
            and ``detect(images, paste_masks=False)``.
        name: what ``/metadata`` calls the model (e.g. the weights file).
    """

    def __init__(self, *, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        if isinstance(model, torch.nn.Module):
            model.eval()
            self.backend = "torch"
            self.device = next(model.parameters()).device
        else:
            self.backend = "onnxruntime"
            self.device = torch.device("cpu")
        self.cfg = model.cfg

    @property
    def precision(self) -> str:
        """The model's inference precision setting (an exported graph: fp32)."""
        setting = getattr(self.cfg, "precision", None) or getattr(self.model, "precision", None)
        return str(setting or "fp32")

    def metadata(self) -> dict[str, Any]:
        """Classes, model, backend, precision and input settings (``GET /metadata``)."""
        cfg = self.cfg
        return {
            "model": self.name,
            "backend": self.backend,
            "precision": self.precision,
            "device": str(self.device),
            "classes": category_table(cfg.category_names),
            "num_classes": cfg.num_classes,
            "input": {"min_size": cfg.input.min_size[-1], "max_size": cfg.input.max_size},
            "mask_threshold": cfg.mask_head.threshold,
        }

    def predict(self, image: Tensor, *, score_thresh: float, image_id: int = 0) -> Prediction:
        """Detects instances in one [3, H, W] image in [0, 1]."""
        start = time.perf_counter()
        with torch.inference_mode():
            result = self.model.detect([image.to(self.device)], paste_masks=False)[0]
        result = result.to("cpu")
        mid = time.perf_counter()
        mask_cfg = self.cfg.mask_head
        detections = coco_results(
            result,
            image_id=image_id,
            score_thresh=score_thresh,
            paste=mask_cfg.paste,
            mask_threshold=mask_cfg.threshold,
        )
        end = time.perf_counter()
        return Prediction(
            height=int(image.shape[-2]),
            width=int(image.shape[-1]),
            detections=detections,
            inference_ms=(mid - start) * 1000,
            encode_ms=(end - mid) * 1000,
        )
