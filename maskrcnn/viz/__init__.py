"""Pictures: instance overlays and prediction grids, training curves, the RoI explainer."""

from maskrcnn.viz.curves import plot_curves
from maskrcnn.viz.draw import draw_instances, instance_color, predictions_grid

__all__ = ["draw_instances", "instance_color", "plot_curves", "predictions_grid"]
