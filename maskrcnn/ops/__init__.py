"""Pure-PyTorch RoI operators: RoIAlign (avg and max), RoIPool and RoIWarp."""

from maskrcnn.ops.roi_align import RoIAlign, roi_align
from maskrcnn.ops.roi_pool import RoIPool, roi_pool
from maskrcnn.ops.roi_warp import RoIWarp, roi_warp

__all__ = ["RoIAlign", "RoIPool", "RoIWarp", "roi_align", "roi_pool", "roi_warp"]
