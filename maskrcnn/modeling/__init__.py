"""The network: backbone, FPN, RPN, RoI heads, mask branch."""

from maskrcnn.modeling.build import build_model
from maskrcnn.modeling.mask_rcnn import MaskRCNN

__all__ = ["MaskRCNN", "build_model"]
