"""Defect segmentation: a SegFormer segmenter with an optional stage-1 classifier.

``predict`` holds the inference class, ``render`` its pictures, ``records`` many files in batches,
the Kaggle submission rows and CSV, and per-image records as CSV or JSON;
``python -m pipelines.segmentation`` (``cli``) is the command line over them.
"""

from pipelines.segmentation.predict import DefectRegion, DefectSegmenter, Segmentation, TileGrid
from pipelines.segmentation.records import (
    defect_confidence,
    segment_files,
    segmentation_record,
    submission_rows,
    write_records_csv,
    write_records_json,
    write_submission,
    write_submission_rows,
)
from pipelines.segmentation.render import CLASS_COLOURS, class_colour, label_map_png, overlay_masks

__all__ = [
    "CLASS_COLOURS",
    "DefectRegion",
    "DefectSegmenter",
    "Segmentation",
    "TileGrid",
    "class_colour",
    "defect_confidence",
    "label_map_png",
    "overlay_masks",
    "segment_files",
    "segmentation_record",
    "submission_rows",
    "write_records_csv",
    "write_records_json",
    "write_submission",
    "write_submission_rows",
]
