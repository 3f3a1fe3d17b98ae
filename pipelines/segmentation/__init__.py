"""Defect segmentation: a SegFormer segmenter with an optional stage-1 classifier.

``predict`` holds the inference class, ``render`` its pictures, ``records`` the Kaggle submission
rows and CSV; ``python -m pipelines.segmentation`` (``cli``) is the command line over them.
"""

from pipelines.segmentation.predict import DefectRegion, DefectSegmenter, Segmentation, TileGrid
from pipelines.segmentation.records import submission_rows, write_submission
from pipelines.segmentation.render import CLASS_COLOURS, class_colour, label_map_png, overlay_masks

__all__ = [
    "CLASS_COLOURS",
    "DefectRegion",
    "DefectSegmenter",
    "Segmentation",
    "TileGrid",
    "class_colour",
    "label_map_png",
    "overlay_masks",
    "submission_rows",
    "write_submission",
]
