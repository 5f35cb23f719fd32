"""Running a model on data: COCO evaluation, prediction on files, pictures of results."""

from maskrcnn.engine.coco_format import LabelMap
from maskrcnn.engine.evaluation import CocoStats, EvalResult, evaluate_coco
from maskrcnn.engine.predict import PredictSummary, predict_folder
from maskrcnn.engine.visualize import draw_instances, plot_curves, predictions_grid

__all__ = [
    "CocoStats",
    "EvalResult",
    "LabelMap",
    "PredictSummary",
    "draw_instances",
    "evaluate_coco",
    "plot_curves",
    "predict_folder",
    "predictions_grid",
]
