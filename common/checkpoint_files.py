"""Every file and config key a checkpoint directory may carry: the contract, written once.

A checkpoint directory is what ``train/`` writes and ``pipelines/`` (and the app) read. The
transformers part (``config.json`` with ``id2label``, the image processor, the weights) is
``save_pretrained``'s; everything this project adds beside it is named here, and read and
written by one function each (``common.calibration`` for ``calibration.json``,
``common.segmentation_rules`` for the minimum areas in ``config.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# What save_pretrained writes.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PROCESSOR_FILE = "preprocessor_config.json"

# Fitted post-processing: temperature, open-set rejection rule, multi-label thresholds.
CALIBRATION_FILE = "calibration.json"

# Keys this project adds to config.json: per-class minimum areas (pixels) of a segmenter, for
# the segmenter alone and for the two-stage pipeline (a stage-1 classifier attached).
MIN_AREA_KEY = "min_area"
MIN_AREA_TWO_STAGE_KEY = "min_area_two_stage"
# A segmenter trained on resized images: the HxW the pipeline resizes to before inference.
INFERENCE_RESIZE_KEY = "inference_resize"

# The ONNX export of the network (served by ONNX Runtime when present; the safetensors weights
# stay beside it for Grad-CAM) and the parity report that checked it against eager.
ONNX_FILE = "model.onnx"
EXPORT_REPORT_FILE = "export_report.json"
# An anomaly detector (common.anomaly_files): its memory banks of good patch features, one tensor
# per product named by the product, and anomaly.json (backbone layers, input size, each product's
# fitted threshold). The backbone itself is saved beside them with save_pretrained.
MEMORY_BANK_FILE = "memory_bank.safetensors"
ANOMALY_FILE = "anomaly.json"
# Its feature extractor (backbone up to the hooked layers, pooling, concatenation) as ONNX. Not
# ONNX_FILE: the detector's folder also holds its backbone's config.json, and a model.onnx there
# would read as that classifier's logits graph to the classification pipeline.
ANOMALY_ONNX_FILE = "anomaly_features.onnx"
# Its report: good vs defective validation scores, the ROC, example anomaly maps, per-image scores.
SCORE_HISTOGRAM_PLOT = "score_histogram.png"
ROC_PLOT = "roc.png"
ANOMALY_MAPS_PLOT = "anomaly_maps.png"
VALIDATION_SCORES_FILE = "validation_scores.csv"

# The report training writes beside the weights.
MODEL_CARD_FILE = "README.md"
# A file meant to be shipped is readable by all: safetensors (0.8) and mkdtemp create owner-only
# ones, which a container's app user (uid 1000, files COPY'd as root) cannot read.
SHIPPED_FILE_MODE = 0o644
TRAIN_RESULTS_FILE = "train_results.json"
EVAL_RESULTS_FILE = "eval_results.json"
TEST_RESULTS_FILE = "test_results.json"
ALL_RESULTS_FILE = "all_results.json"
TRAINER_STATE_FILE = "trainer_state.json"
PER_CLASS_FILE = "per_class.csv"
SKIPPED_IMAGES_FILE = "skipped_images.csv"
CONFUSION_MATRIX_PLOT = "confusion_matrix.png"
TRAINING_CURVES_PLOT = "training_curves.png"
RELIABILITY_PLOT = "reliability.png"
MISCLASSIFIED_PLOT = "misclassified.png"
PREDICTIONS_PLOT = "predictions.png"
# Files with saved metrics, in the order later ones override earlier ones.
METRIC_FILES = (ALL_RESULTS_FILE, EVAL_RESULTS_FILE, TEST_RESULTS_FILE)


def is_checkpoint_dir(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a saved model (``config.json``)."""
    return (Path(directory) / CONFIG_FILE).is_file()


def read_config(directory: str | os.PathLike) -> dict:
    """``config.json`` of a checkpoint directory as a dict."""
    return json.loads((Path(directory) / CONFIG_FILE).read_text())


def saved_metrics(directory: str | os.PathLike) -> dict[str, float]:
    """Numeric metrics saved with a checkpoint (``*_results.json``), later files winning for a key."""
    metrics: dict[str, float] = {}
    for name in METRIC_FILES:
        path = Path(directory) / name
        if not path.is_file():
            continue
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a damaged metrics file must not stop the model from loading
        if isinstance(values, dict):
            metrics.update(
                {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            )
    return metrics


def read_model_card(directory: str | os.PathLike | None) -> str | None:
    """The model card saved with a checkpoint, without its YAML front matter; None when there is none.

    The front matter is metadata for the Hub (tags, metric names), not text for people.
    """
    path = Path(directory) / MODEL_CARD_FILE if directory else None
    if path is None or not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.startswith("---\n"):
        _, closed, body = text[4:].partition("\n---\n")
        text = body if closed else text
    return text.strip()
