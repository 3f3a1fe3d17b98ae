"""The anomaly threshold: fitted on good images only, applied as "normalised score > 1".

No defect labels are needed: every good image is scored by a memory bank built without it
(training's folds), and the threshold is the conformal rank of those scores for
``false_reject_rate`` (:func:`threshold_rank`). Scores are then reported divided by
the threshold, so 1.0 is the line for every product and every backbone. Training fits with
:func:`fit_threshold`; inference and training's own evaluation apply it with
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


def threshold_rank(count: int, false_reject_rate: float) -> int:
    """The 1-based rank, among ``count`` sorted good scores, that the threshold is: ``ceil((n + 1)(1 - rate))``.

    The split-conformal rank: were a new good image's score exchangeable with the ``n`` scored
    ones, it would exceed that rank's score with probability at most ``rate``. Training's scores
    are out of fold (cross-conformal), each from a bank of the other folds, while a new image is
    scored by the stored bank, which holds every one of those banks: its nearest patches are as
    near or nearer, so its score is if anything lower, and the line errs towards fewer false
    rejects. The plain quantile (``floor(rate * n)`` scores above) promises less: with 100 images
    and a 1% target it lets one above and rejects about 2% of new good images. A rank above ``n``
    means the target cannot be promised with so few images; the caller uses the largest score and
    says so.
    """
    # round(): (n + 1) * (1 - rate) is 99.00000000000001 for n = 99, rate = 0.01.
    return math.ceil(round((count + 1) * (1.0 - false_reject_rate), 9))


def target_reachable(count: int, false_reject_rate: float) -> bool:
    """Whether ``count`` good scores are enough for a threshold that keeps ``false_reject_rate``."""
    return threshold_rank(count, false_reject_rate) <= count


def fit_threshold(good_scores: Sequence[float] | np.ndarray, false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE):
    """The image threshold for which a new good image is rejected with probability at most ``false_reject_rate``.

    The :func:`threshold_rank`-th smallest of ``good_scores`` (out-of-fold scores of good images).
    With fewer than ``1 / rate - 1`` images that rank does not exist and the largest score is
    used: it rejects none of them, but the target is not promised (training reports this).

    Returns:
        The threshold (a float > 0).

    Raises:
        ValueError: no scores, non-finite scores, or a rate outside (0, 1).
    """
    check_false_reject_rate(false_reject_rate)
    scores = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())
    if scores.size == 0:
        raise ValueError("fitting a threshold needs the scores of at least one good image")
    if not np.isfinite(scores).all():
        raise ValueError("the good images' scores contain NaN or infinity; the features are broken")
    rank = min(threshold_rank(scores.size, false_reject_rate), scores.size)
    threshold = float(scores[rank - 1])
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
