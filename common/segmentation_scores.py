"""Segmentation scores: Severstal's per-class Dice, mean IoU and pixel accuracy.

Severstal scored each (image, class) pair with Dice and averaged over all pairs, counting
an empty truth with an empty prediction as a perfect 1. Most pairs are empty, so an
all-empty answer already scores high. Two scores beside it show what the model really
finds: the Dice over images that have defects (all their pairs, so still partly empty ones)
and the Dice over the pairs whose truth has the class, where an all-empty answer scores 0.

Training selects and reports with these scores and ``bench/`` scores the served pipeline with
them, so both read the same numbers the same way.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def dice_per_pair(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of every (image, defect class) pair, shape ``(images, num_classes - 1)``.

    Args:
        predicted: class-index maps ``(N, H, W)``.
        truth: class-index maps ``(N, H, W)``; ``IGNORE_INDEX`` pixels are not scored.
        num_classes: including background (class 0).
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    scored = truth != IGNORE_INDEX
    scores = np.ones((len(truth), num_classes - 1))
    for c in range(1, num_classes):
        p = (predicted == c) & scored
        t = (truth == c) & scored
        intersection = (p & t).reshape(len(truth), -1).sum(1)
        total = p.reshape(len(truth), -1).sum(1) + t.reshape(len(truth), -1).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores[:, c - 1] = np.where(total == 0, 1.0, 2 * intersection / np.maximum(total, 1))
    return scores


def _classes_present(truth: np.ndarray, num_classes: int) -> np.ndarray:
    """``(images, num_classes - 1)`` booleans: does the truth of this image hold this class."""
    return np.stack([(truth == c).reshape(len(truth), -1).any(1) for c in range(1, num_classes)], axis=1)


def segmentation_metrics(predicted: np.ndarray, truth: np.ndarray, id2label: dict[int, str]) -> dict[str, float]:
    """Severstal mean Dice (and per class), Dice over defective images, mean IoU, pixel accuracy."""
    num_classes = len(id2label)
    dice = dice_per_pair(predicted, truth, num_classes)
    present = _classes_present(truth, num_classes)
    defective = present.any(1)
    metrics = {"mean_dice": float(dice.mean())}
    metrics["mean_dice_defective_images"] = float(dice[defective].mean()) if defective.any() else float("nan")
    metrics["mean_dice_present_defects"] = float(dice[present].mean()) if present.any() else float("nan")
    for c in range(1, num_classes):
        metrics[f"dice_{id2label[c]}"] = float(dice[:, c - 1].mean())
    scored = truth != IGNORE_INDEX
    metrics["pixel_accuracy"] = float((predicted[scored] == truth[scored]).mean())
    ious = []
    for c in range(num_classes):
        p, t = (predicted == c) & scored, (truth == c) & scored
        union = (p | t).sum()
        if union:
            ious.append((p & t).sum() / union)
    metrics["mean_iou"] = float(np.mean(ious))
    return metrics
