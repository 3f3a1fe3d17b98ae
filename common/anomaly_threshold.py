"""The anomaly threshold: fitted on good images only, applied as "normalised score > 1".

No defect labels are needed: part of the good images is held out of the memory bank, scored,
and the threshold is the score that only ``false_reject_rate`` of them exceed. Scores are then
reported divided by the threshold, so 1.0 is the line for every product and every backbone.
Training fits with :func:`fit_threshold`; inference and training's own evaluation apply it with
:func:`normalise_scores` and :func:`is_anomalous` - the one rule, written once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_FALSE_REJECT_RATE = 0.01


def check_false_reject_rate(rate: float) -> None:
    """Refuse a target outside (0, 1), naming the flag.

    Raises:
        ValueError: naming ``--false_reject_rate`` and the value.
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"--false_reject_rate {rate} must be between 0 and 1 (exclusive); 0.01 rejects 1% of good")


def fit_threshold(good_scores: Sequence[float] | np.ndarray, false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE):
    """The image threshold that rejects at most ``false_reject_rate`` of ``good_scores``.

    The smallest held-out score with at most ``floor(rate * n)`` scores above it. With fewer than
    ``1 / rate`` images that is the largest score: the target cannot be measured, and the
    threshold rejects none of them (training reports this).

    Returns:
        The threshold (a float > 0).

    Raises:
        ValueError: no scores, non-finite scores, or a rate outside (0, 1).
    """
    check_false_reject_rate(false_reject_rate)
    scores = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())
    if scores.size == 0:
        raise ValueError("fitting a threshold needs the scores of at least one held-out good image")
    if not np.isfinite(scores).all():
        raise ValueError("the held-out good scores contain NaN or infinity; the features are broken")
    allowed_above = math.floor(false_reject_rate * scores.size)
    threshold = float(scores[scores.size - 1 - allowed_above])
    # A threshold of 0 (identical images) would make every normalised score infinite or NaN.
    return max(threshold, np.finfo(np.float32).tiny)


def normalise_scores(scores: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """Raw scores (distances) -> scores where 1.0 is the threshold."""
    return np.asarray(scores, dtype=np.float64) / float(threshold)


def is_anomalous(normalised_scores: Sequence[float] | np.ndarray | float) -> np.ndarray | bool:
    """The verdict: a normalised score strictly above 1 (the threshold itself still passes)."""
    verdict = np.asarray(normalised_scores) > 1.0
    return bool(verdict) if verdict.ndim == 0 else verdict


def false_reject_rate(good_scores: Sequence[float] | np.ndarray, threshold: float = 1.0) -> float:
    """The share of good images the rule rejects at ``threshold`` (NaN when there are none).

    Args:
        good_scores: Good images' scores: raw (``ProductRule.held_out_scores``) with a raw
            threshold, or normalised with the default threshold 1.0.
        threshold: The line on the same scale; an image exactly at it passes, as in :func:`is_anomalous`.

    Raises:
        ValueError: a threshold that is not a positive number.

    >>> false_reject_rate([1.0, 2.0, 3.0, 4.0], threshold=2.0)
    0.5
    """
    if not threshold > 0 or not math.isfinite(threshold):
        raise ValueError(f"threshold {threshold} must be a positive number (1.0 is the fitted threshold)")
    scores = np.asarray(good_scores, dtype=np.float64)
    return float(is_anomalous(normalise_scores(scores, threshold)).mean()) if scores.size else float("nan")
