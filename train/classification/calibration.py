"""Fitting what ``calibration.json`` holds: temperature scaling, calibration error, open-set rejection.

A fine-tuned classifier's softmax scores are usually over-confident, and it has to say
something for every image, including images of none of its classes. This module fits, on
the validation split, a temperature that makes the scores honest (Guo et al. 2017, "On
Calibration of Modern Neural Networks") and a threshold below which an image is rejected
as "unknown" (max softmax probability, Hendrycks & Gimpel 2017; or energy, Liu et al. 2020).
The file's format, its reader and writer, and how its numbers are applied (``softmax``,
``energy_score``, ``OpenSetRule``) are ``common.calibration``'s, shared with the pipelines.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

# With unknown-class examples to fit on, the threshold still may not reject more than this share
# of known images: a validation set with few "other" images would otherwise push it up too far.
MIN_KNOWN_ACCEPTANCE = 0.8
# Temperatures searched, as log T. Outside this range the validation set is degenerate
# (e.g. every image right with a wide margin) and the bound is returned.
_LOG_TEMPERATURE_BOUNDS = (math.log(0.01), math.log(100.0))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``softmax(logits / T)``.

    The search runs over log T, which keeps T positive, with bounded Brent minimisation: the NLL
    is convex in 1/T, so it has a single minimum along log T and the result is deterministic.

    Args:
        logits: Validation logits of shape ``(n, num_classes)``.
        labels: True class ids of shape ``(n,)``.

    Returns:
        The temperature; > 1 softens over-confident scores, < 1 sharpens under-confident ones.

    Raises:
        ValueError: If the input is empty, the shapes disagree or a label is out of range.
    """
    logits, labels = _check_logits_and_labels(logits, labels, "fit_temperature")
    result = minimize_scalar(
        _negative_log_likelihood,
        args=(logits, labels),
        bounds=_LOG_TEMPERATURE_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 prediction, with equal-width confidence bins.

    ``sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|`` over bins ``(k/n_bins, (k+1)/n_bins]``.

    Args:
        probs: Class probabilities of shape ``(n, num_classes)``.
        labels: True class ids of shape ``(n,)``.
        n_bins: Number of bins over (0, 1].

    Returns:
        The ECE, in [0, 1].

    Raises:
        ValueError: If the input is empty, the shapes disagree or ``n_bins < 1``.
    """
    probs, labels = _check_logits_and_labels(probs, labels, "expected_calibration_error")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    confidence, correct = _top1_confidence_and_correct(probs, labels)
    bins = confidence_bins(confidence, n_bins)
    error = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def fit_rejection_threshold(
    known_scores: np.ndarray, other_scores: np.ndarray | None = None, known_acceptance: float = 0.95
) -> float:
    """A score threshold for accepting an image as one of the known classes (accept when score >= threshold).

    Without ``other_scores`` it is the threshold that accepts at least ``known_acceptance`` of the
    known validation images (a lower quantile of their scores).

    With ``other_scores`` (images of none of the classes) it maximises Youden's J, the share of known
    images accepted minus the share of other images accepted, among thresholds that accept at least
    ``min(known_acceptance, MIN_KNOWN_ACCEPTANCE)`` (0.8) of the known images. Ties go to the lower
    threshold, which accepts more known images, and the threshold is placed halfway between the
    chosen score and the next lower one, so it sits in the gap rather than on a validation score.

    Args:
        known_scores: Scores of validation images of the known classes; higher = more confidently known.
        other_scores: Scores of validation images of unknown classes, or None.
        known_acceptance: Share of known images to accept, in (0, 1].

    Returns:
        The threshold.

    Raises:
        ValueError: If ``known_scores`` (or ``other_scores`` when given) is empty or not finite, or
            ``known_acceptance`` is outside (0, 1].
    """
    known_scores = _check_scores(known_scores, "known_scores")
    if not 0 < known_acceptance <= 1:
        raise ValueError(f"known_acceptance must be in (0, 1], got {known_acceptance}.")
    if other_scores is None:
        # "lower" picks a validation score at or below the exact quantile, so at least
        # known_acceptance of the known scores are >= it.
        return float(np.quantile(known_scores, 1 - known_acceptance, method="lower"))
    other_scores = _check_scores(other_scores, "other_scores")

    candidates = np.unique(np.concatenate([known_scores, other_scores]))
    known_sorted, other_sorted = np.sort(known_scores), np.sort(other_scores)
    known_accepted = 1 - np.searchsorted(known_sorted, candidates, side="left") / known_sorted.size
    other_accepted = 1 - np.searchsorted(other_sorted, candidates, side="left") / other_sorted.size
    youden = np.where(
        known_accepted >= min(known_acceptance, MIN_KNOWN_ACCEPTANCE), known_accepted - other_accepted, -np.inf
    )
    best = int(np.argmax(youden))  # the first maximum: the lowest threshold
    if best == 0:
        return float(candidates[0])
    return float((candidates[best - 1] + candidates[best]) / 2)


def rejection_rates(
    known_scores: np.ndarray, other_scores: np.ndarray | None, threshold: float
) -> dict[str, float | None]:
    """How a threshold splits known and other images (accepted when score >= threshold).

    Returns:
        ``known_accepted``, ``known_rejected`` and ``other_rejected`` as fractions;
        ``other_rejected`` is None when ``other_scores`` is None.

    Raises:
        ValueError: If a score array is empty or not finite.
    """
    known_scores = _check_scores(known_scores, "known_scores")
    known_accepted = float((known_scores >= threshold).mean())
    other_rejected = None
    if other_scores is not None:
        other_rejected = float((_check_scores(other_scores, "other_scores") < threshold).mean())
    return {"known_accepted": known_accepted, "known_rejected": 1 - known_accepted, "other_rejected": other_rejected}


def _negative_log_likelihood(log_temperature: float, logits: np.ndarray, labels: np.ndarray) -> float:
    log_probs = log_softmax(logits / math.exp(log_temperature), axis=1)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def _top1_confidence_and_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return probs.max(axis=1), probs.argmax(axis=1) == labels


def confidence_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of each confidence, with bins ``(k/n_bins, (k+1)/n_bins]`` as in Guo et al."""
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _check_logits_and_labels(scores: np.ndarray, labels: np.ndarray, caller: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(
            f"{caller} needs at least one validation example: scores must have shape (n, num_classes) "
            f"with n > 0, got {scores.shape}."
        )
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"{caller}: labels must have shape ({scores.shape[0]},), got {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"{caller}: labels must be integer class ids in [0, {scores.shape[1] - 1}].")
    if not np.isfinite(scores).all():
        raise ValueError(f"{caller}: scores contain NaN or infinity.")
    return scores, labels


def _check_scores(scores: np.ndarray, name: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError(f"{name} is empty; score at least one validation image (or pass None for other_scores).")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} contains NaN or infinity.")
    return scores
