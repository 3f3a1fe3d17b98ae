"""Image classification: load a checkpoint, classify images, write the results.

``predict`` holds the inference class; ``records`` runs it over many files and writes the rows
as CSV; ``python -m pipelines.classification`` (``cli``) is the command line over both.
"""

from pipelines.classification.predict import (
    Classification,
    ImageClassifier,
    ImageSource,
    ModelInfo,
    Prediction,
)
from pipelines.classification.records import classify_files, write_predictions_csv

__all__ = [
    "Classification",
    "ImageClassifier",
    "ImageSource",
    "ModelInfo",
    "Prediction",
    "classify_files",
    "write_predictions_csv",
]
