"""Typed containers that flow between pipeline stages."""

from maskrcnn.structures.image_list import ImageList
from maskrcnn.structures.instances import Instances, as_instances

__all__ = ["ImageList", "Instances", "as_instances"]
