"""How well a detector separates good from defective validation images, and where it looks.

- image AUROC: good vs defective image scores (threshold-free);
- pixel AUROC: every pixel's map value vs its mask (good images' pixels are all good);
- PRO (MVTec AD's per-region overlap): the mean share of each defect region above a threshold,
  integrated over thresholds up to a 30% false-positive rate on good pixels and divided by 0.3,
  so a small defect counts as much as a large one;
- at the stored threshold: F1 on the defective class and the false-reject rate on good images;
- the F1-optimal threshold, for reference only: it is fitted on the validation defects, so it is
  optimistic, and the stored threshold stays the one fitted on good images alone.

Training computes the pixel metrics at the network's input size (masks resized with nearest
neighbour), which keeps a strip's 100k pixels from becoming a million per image.
scikit-learn computes the ROC and precision-recall curves; scipy labels the defect regions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score, roc_curve

from common.anomaly_threshold import false_reject_rate, is_anomalous

PRO_MAX_FPR = 0.3
_PRO_STEPS = 101


def image_metrics(good_scores: np.ndarray, defective_scores: np.ndarray) -> dict[str, float]:
    """Image-level metrics of normalised scores (1.0 = the stored threshold)."""
    good, defective = np.asarray(good_scores, float), np.asarray(defective_scores, float)
    scores = np.concatenate([good, defective])
    labels = np.concatenate([np.zeros(len(good), int), np.ones(len(defective), int)])
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = int(np.argmax(f1))
    return {
        "image_auroc": float(roc_auc_score(labels, scores)),
        "f1_at_threshold": float(f1_score(labels, is_anomalous(scores).astype(int), zero_division=0)),
        "false_reject_rate": false_reject_rate(good),
        "detection_rate": float(np.mean(is_anomalous(defective))) if len(defective) else float("nan"),
        "f1_optimal": float(f1[best]),
        "f1_optimal_threshold": float(thresholds[best]),
    }


def image_roc(good_scores: np.ndarray, defective_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(false_positive_rate, true_positive_rate, thresholds)`` of the image scores."""
    scores = np.concatenate([good_scores, defective_scores])
    labels = np.concatenate([np.zeros(len(good_scores), int), np.ones(len(defective_scores), int)])
    return roc_curve(labels, scores)


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """AUROC of every pixel's map value against its (boolean) mask; NaN without defect pixels."""
    values = np.concatenate([m.ravel() for m in maps])
    labels = np.concatenate([k.ravel() for k in masks]).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, values))


def pro_score(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], max_fpr: float = PRO_MAX_FPR) -> float:
    """The normalised area under the per-region-overlap curve up to ``max_fpr`` (MVTec AD's AUPRO).

    Thresholds are the quantiles of the good pixels' values at false-positive rates
    ``0 .. max_fpr``, so the curve is sampled evenly along the axis it is integrated over.
    """
    normal = np.concatenate([m[~k.astype(bool)] for m, k in zip(maps, masks)])
    regions = []
    for values, mask in zip(maps, masks):
        labelled, count = ndimage.label(mask.astype(bool))
        regions.extend(np.sort(values[labelled == index]) for index in range(1, count + 1))
    if not regions or normal.size == 0:
        return float("nan")
    fprs = np.linspace(0.0, max_fpr, _PRO_STEPS)
    thresholds = np.quantile(normal, 1.0 - fprs)
    overlaps = np.array(
        [np.mean([1.0 - np.searchsorted(r, t, side="right") / r.size for r in regions]) for t in thresholds]
    )
    return float(np.trapezoid(overlaps, fprs) / max_fpr)
