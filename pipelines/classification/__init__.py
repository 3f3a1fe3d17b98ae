"""Image classification: load a checkpoint, classify images, write the results.

``predict`` holds the inference class; ``records`` runs it over many files (zip members too) in
batches and writes the rows as CSV or JSON; ``python -m pipelines.classification`` (``cli``) is the
command line over both.
"""

from pipelines.classification.predict import (
    Classification,
    ImageClassifier,
    ImageSource,
    ModelInfo,
    Prediction,
)
from pipelines.classification.records import (
    classify_files,
    needs_review,
    prediction_record,
    write_predictions_csv,
    write_predictions_json,
)

__all__ = [
    "Classification",
    "ImageClassifier",
    "ImageSource",
    "ModelInfo",
    "Prediction",
    "classify_files",
    "needs_review",
    "prediction_record",
    "write_predictions_csv",
    "write_predictions_json",
]
