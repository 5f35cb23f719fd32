"""Reading and writing weights: ours, torchvision's, detectron2's."""

from maskrcnn.weights.native import load_model, read_config, save_model
from maskrcnn.weights.torchvision import from_torchvision

__all__ = ["from_torchvision", "load_model", "read_config", "save_model"]
