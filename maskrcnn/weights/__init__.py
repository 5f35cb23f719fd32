"""Reading and writing weights: ours, torchvision's, detectron2's, and published ones by name."""

from maskrcnn.weights.detectron2 import from_detectron2
from maskrcnn.weights.native import load_model, read_config, save_model
from maskrcnn.weights.pretrained import from_pretrained, load_imagenet_backbone
from maskrcnn.weights.torchvision import from_torchvision

__all__ = [
    "from_detectron2",
    "from_pretrained",
    "from_torchvision",
    "load_imagenet_backbone",
    "load_model",
    "read_config",
    "save_model",
]
