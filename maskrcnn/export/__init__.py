"""Deployment: ONNX export of a Mask R-CNN, and the exported graph on onnxruntime.

``export_onnx(model, "model.onnx")`` writes the graph; ``OnnxMaskRCNN("model.onnx")`` runs it
with the model's ``detect`` and ``predict``. They need the ``onnx`` and ``onnxruntime``
packages (``pip install .[export]``), imported only when called.
"""

from maskrcnn.export.onnx_export import export_onnx
from maskrcnn.export.onnx_runtime import OnnxMaskRCNN

__all__ = ["OnnxMaskRCNN", "export_onnx"]
