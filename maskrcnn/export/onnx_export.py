"""``export_onnx``: a Mask R-CNN as one ONNX graph for any image size and any number of detections.

The graph (see :mod:`maskrcnn.export.graph`) has one input and four outputs:

- ``image``: [3, H, W] RGB, ``uint8`` 0-255 (default) or ``float32`` in [0, 1]; H and W free.
- ``boxes`` [D, 4] float32 xyxy in the image's pixels, ``labels`` [D] int64, ``scores`` [D]
  float32 (best first), ``masks`` [D, 1, M, M] float32 probabilities in each box's frame; D
  is free and may be 0.

Only standard ONNX ops (opset :data:`~maskrcnn.export.onnx_ops.OPSET`): ``RoiAlign``,
``NonMaxSuppression``, ``TopK``, ``Resize``, ``Pad``, convolutions and elementwise ops, so
onnxruntime's CPU provider runs it with no custom op library. The model configuration
(category names, mask paste method and threshold) is stored in the file's metadata, from which
:class:`~maskrcnn.export.onnx_runtime.OnnxMaskRCNN` rebuilds the same outputs as the model.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch

from maskrcnn.export.graph import ExportableMaskRCNN
from maskrcnn.export.onnx_ops import OPSET
from maskrcnn.modeling.mask_rcnn import MaskRCNN

FORMAT = "maskrcnn-onnx/1"
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "labels", "scores", "masks")


def export_onnx(
    model: MaskRCNN,
    path: str | Path,
    *,
    input_dtype: str = "uint8",
    example_size: tuple[int, int] = (480, 640),
    opset: int = OPSET,
) -> Path:
    """Writes ``model`` (a :class:`~maskrcnn.modeling.MaskRCNN`) as an ONNX file.

    Exported in fp32 and eval mode, whatever the model's ``precision`` (the model's mode is
    restored afterwards), and traced on the CPU (a model elsewhere is copied there). The
    example image only drives the tracing: the graph takes any size.

    Args:
        model: the model (FPN or C4, RoIAlign poolers).
        path: the ``.onnx`` file to write (folders are created).
        input_dtype: "uint8" (0-255) or "float32" ([0, 1]) for the graph's image input.
        example_size: (H, W) of the tracing example.
        opset: ONNX opset, at least 16 (RoiAlign's ``coordinate_transformation_mode``).

    Returns:
        ``path``.

    Raises:
        ValueError: for an opset below 16 or a model with a non-RoIAlign pooler.
    """
    import onnx

    if opset < 16:
        raise ValueError(f"opset {opset}: RoiAlign's coordinate_transformation_mode needs >= 16")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()  # traced on the CPU; the caller's model stays put
    graph = ExportableMaskRCNN(model=model, input_dtype=input_dtype).eval()
    gen = torch.Generator().manual_seed(0)
    if input_dtype == "uint8":
        example = torch.randint(0, 256, (3, *example_size), dtype=torch.uint8, generator=gen)
    else:
        example = torch.rand((3, *example_size), generator=gen)
    dynamic = {name: {0: "detections"} for name in OUTPUT_NAMES}
    dynamic[INPUT_NAME] = {1: "height", 2: "width"}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about every shape it reads; the graph reads them on purpose.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    proto = onnx.load(str(path))
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.cfg.to_dict()),
        "input_dtype": input_dtype,
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "Mask R-CNN (maskrcnn): image [3, H, W] -> boxes, labels, scores, masks"
    onnx.save(proto, str(path))
    return path
