"""maskrcnn: Mask R-CNN from scratch in PyTorch."""

from maskrcnn.config import ModelConfig, preset
from maskrcnn.modeling import MaskRCNN, build_model
from maskrcnn.structures import ImageList, Instances
from maskrcnn.weights import (
    from_detectron2,
    from_pretrained,
    from_torchvision,
    load_imagenet_backbone,
    load_model,
    save_model,
)

__version__ = "0.1.0"

__all__ = [
    "ImageList",
    "Instances",
    "MaskRCNN",
    "ModelConfig",
    "build_model",
    "from_detectron2",
    "from_pretrained",
    "from_torchvision",
    "load_imagenet_backbone",
    "load_model",
    "preset",
    "save_model",
]
