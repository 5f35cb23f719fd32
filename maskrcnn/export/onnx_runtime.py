"""``OnnxMaskRCNN``: an exported graph run by onnxruntime, with the model's ``detect``/``predict``.

The graph returns masks in each box's frame ([D, 1, M, M] probabilities); they are pasted into
the image here, outside the graph, by the same code the model uses (``cfg.mask_head.paste``:
``grid_sample`` or ``torchvision``, see :mod:`maskrcnn.ops.paste`), so its outputs are the
model's. The configuration comes from the file's metadata (written by
:func:`~maskrcnn.export.onnx_export.export_onnx`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maskrcnn.config import ModelConfig
from maskrcnn.export.onnx_export import FORMAT, INPUT_NAME, OUTPUT_NAMES
from maskrcnn.ops.paste import paste_masks_grid_sample, paste_masks_torchvision
from maskrcnn.structures import Instances


class OnnxMaskRCNN:
    """An exported Mask R-CNN on onnxruntime (CPU provider unless told otherwise).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (None: onnxruntime's default, one per core).
        providers: onnxruntime execution providers, in order of preference.

    Attributes:
        cfg: the exported model's configuration (category names, paste, threshold, ...).
        input_dtype: "uint8" or "float32", the graph's image input.
        precision: "fp32" (the graph is exported in fp32).
        path: the file.

    Raises:
        FileNotFoundError: no such file. ValueError: not a maskrcnn ONNX file.
    """

    precision = "fp32"
    training = False  # inference only; eval()/train(False) are accepted like a module's

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
    ) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.path}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: onnxruntime cannot load it ({err})") from err
        metadata = self.session.get_modelmeta().custom_metadata_map
        if metadata.get("format") != FORMAT or "config" not in metadata:
            raise ValueError(f"{self.path}: not a maskrcnn ONNX file (no {FORMAT!r} metadata)")
        self.cfg = ModelConfig.from_dict(json.loads(metadata["config"]))
        self.input_dtype = metadata.get("input_dtype", "uint8")

    def eval(self) -> OnnxMaskRCNN:
        """No-op (the graph is always in inference mode), so it fits code written for models."""
        return self

    def train(self, mode: bool = True) -> OnnxMaskRCNN:
        """No-op for ``mode=False``; an exported graph cannot be put in training mode."""
        if mode:
            raise ValueError("an exported ONNX graph runs inference only; it cannot train")
        return self

    def _input_array(self, image: Tensor) -> np.ndarray:
        """[3, H, W] uint8 or float in [0, 1] -> the graph's input array."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image: expected a [3, H, W] tensor, got {tuple(image.shape)}")
        image = image.detach().cpu()
        if self.input_dtype == "uint8":
            if image.dtype != torch.uint8:
                image = (image.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
        elif image.dtype == torch.uint8:
            image = image.float() / 255.0
        else:
            image = image.float()
        return np.ascontiguousarray(image.numpy())

    def run(self, image: Tensor) -> Instances:
        """Detections of one image, masks in the box frame ([D, 1, M, M] probabilities).

        Args:
            image: [3, H, W], uint8 0-255 or float in [0, 1] (converted to the graph's dtype;
                floats become uint8 by rounding ``x * 255``, exact for images read from 8-bit
                files).
        """
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: self._input_array(image)})
        boxes, labels, scores, masks = (torch.from_numpy(o) for o in outputs)
        names = self.cfg.category_names
        return Instances(
            image_size=(int(image.shape[-2]), int(image.shape[-1])),
            boxes=boxes,
            labels=labels,
            scores=scores,
            masks=masks,
            category_names=[names[i] if i < len(names) else str(i) for i in labels.tolist()],
        )

    def detect(self, images: list[Tensor], *, paste_masks: bool = True) -> list[Instances]:
        """As :meth:`maskrcnn.modeling.MaskRCNN.detect`: one graph run per image.

        Args:
            images: [3, H_i, W_i] RGB floats in [0, 1] (or uint8).
            paste_masks: True: soft masks [N, 1, H_i, W_i]; False: [N, 1, M, M] in box frames.
        """
        results = [self.run(image) for image in images]
        if paste_masks:
            paste = (
                paste_masks_torchvision
                if self.cfg.mask_head.paste == "torchvision"
                else paste_masks_grid_sample
            )
            for r in results:
                assert r.masks is not None  # run() always sets them
                r.masks = paste(r.masks, r.boxes, r.image_size)
        return results

    def predict(self, image: Any) -> Instances:
        """As :meth:`maskrcnn.modeling.MaskRCNN.predict`: boolean [N, H, W] masks, names."""
        from maskrcnn.data.io import to_image_tensor

        result = self.detect([to_image_tensor(image)])[0]
        assert result.masks is not None
        result.masks = result.masks[:, 0] >= self.cfg.mask_head.threshold
        return result
