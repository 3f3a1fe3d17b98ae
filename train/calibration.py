"""Temperature scaling, calibration error and open-set rejection, fitted on validation data.

A fine-tuned classifier's softmax scores are usually over-confident, and it has to say
something for every image, including images of none of its classes. This module fits, on
the validation split, a temperature that makes the scores honest (Guo et al. 2017, "On
Calibration of Modern Neural Networks") and a threshold below which an image is rejected
as "unknown" (max softmax probability, Hendrycks & Gimpel 2017; or energy, Liu et al. 2020).

The result is written next to the model as ``calibration.json``. The inference side
(``pipelines/``) must not import ``train/``, so it reads this file itself; the format is::

    {
      "temperature": 1.7,              # > 0; probabilities are softmax(logits / temperature)
      "ece_before": 0.081,             # expected calibration error on validation, or null
      "ece_after": 0.019,              # the same after temperature scaling, or null
      "rejection": {                   # or null: never reject
        "method": "max_softmax",       # or "energy"
        "threshold": 0.42              # accept as known when score >= threshold
      },
      "multi_label_thresholds": [0.35, 0.6]   # per-class sigmoid thresholds, or null
    }

The rejection score uses the stored temperature, as the threshold was fitted with it:

- ``max_softmax``: ``max(softmax(logits / temperature))``, in (0, 1];
- ``energy``: ``temperature * logsumexp(logits / temperature)``, unbounded.

Higher scores mean "more like the known classes" for both.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

CALIBRATION_FILE = "calibration.json"
OPEN_SET_METHODS = ("max_softmax", "energy")
# With unknown-class examples to fit on, the threshold still may not reject more than this share
# of known images: a validation set with few "other" images would otherwise push it up too far.
MIN_KNOWN_ACCEPTANCE = 0.8
# Temperatures searched, as log T. Outside this range the validation set is degenerate
# (e.g. every image right with a wide margin) and the bound is returned.
_LOG_TEMPERATURE_BOUNDS = (math.log(0.01), math.log(100.0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis of ``logits / temperature``.

    Raises:
        ValueError: If ``temperature`` is not a positive finite number.
    """
    _check_temperature(temperature)
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1))


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy, ``temperature * logsumexp(logits / temperature)``, over the last axis.

    Higher means more like the known classes (Liu et al. 2020 call the negative of this the energy).

    Raises:
        ValueError: If ``temperature`` is not a positive finite number.
    """
    _check_temperature(temperature)
    return temperature * logsumexp(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


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
    bins = _confidence_bins(confidence, n_bins)
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


@dataclass
class OpenSetRule:
    """Reject an image as unknown when its score is below ``threshold``.

    Attributes:
        method: ``"max_softmax"`` (top softmax probability) or ``"energy"`` (``energy_score``).
        threshold: Accept as known when score >= threshold.
    """

    method: Literal["max_softmax", "energy"]
    threshold: float

    def __post_init__(self):
        if self.method not in OPEN_SET_METHODS:
            raise ValueError(f"OpenSetRule method must be one of {OPEN_SET_METHODS}, got {self.method!r}.")
        if not _is_number(self.threshold):
            raise ValueError(f"OpenSetRule threshold must be a number, got {self.threshold!r}.")
        if not math.isfinite(self.threshold):
            raise ValueError(f"OpenSetRule threshold must be finite, got {self.threshold}.")
        self.threshold = float(self.threshold)

    def score(self, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """Scores of ``logits`` (shape ``(..., num_classes)``) for this rule; higher = more known."""
        if self.method == "energy":
            return energy_score(logits, temperature)
        return softmax(logits, temperature).max(axis=-1)

    def to_dict(self) -> dict[str, Any]:
        """The ``"rejection"`` entry of ``calibration.json``."""
        return {"method": self.method, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenSetRule:
        """Build a rule from ``to_dict`` output.

        Raises:
            ValueError: If a key is missing or a value is invalid.
        """
        if not isinstance(data, dict) or not {"method", "threshold"} <= set(data):
            raise ValueError(f"An open-set rule needs the keys 'method' and 'threshold', got {data!r}.")
        return cls(method=data["method"], threshold=data["threshold"])


@dataclass
class CalibrationRecord:
    """What ``calibration.json`` holds; see the module docstring for the file format.

    Attributes:
        temperature: Divide logits by this before softmax.
        ece_before: Validation ECE of the raw softmax (NaN when not measured).
        ece_after: Validation ECE after temperature scaling (NaN when not measured).
        rejection: The open-set rule, or None to never reject.
        thresholds: Per-class sigmoid thresholds of a multi-label model, or None.
    """

    temperature: float
    ece_before: float
    ece_after: float
    rejection: OpenSetRule | None
    thresholds: list[float] | None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``calibration.json`` into a checkpoint directory (created if missing).

        Returns:
            The path of the file written.

        Raises:
            ValueError: If the temperature is not a positive finite number.
        """
        _check_temperature(self.temperature)
        data = {
            "temperature": float(self.temperature),
            # Strict JSON has no NaN; an unmeasured error is written as null.
            "ece_before": _finite_or_none(self.ece_before),
            "ece_after": _finite_or_none(self.ece_after),
            "rejection": None if self.rejection is None else self.rejection.to_dict(),
            "multi_label_thresholds": None if self.thresholds is None else [float(t) for t in self.thresholds],
        }
        path = Path(directory) / CALIBRATION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CalibrationRecord | None:
        """Read ``calibration.json`` from a checkpoint directory.

        Returns:
            The record, or None when the directory has no ``calibration.json`` (an uncalibrated model).

        Raises:
            ValueError: If the file is not valid JSON or does not have the documented keys and types;
                the message names the file.
        """
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON ({error}); delete it or re-run calibration.") from error
        try:
            return cls._from_json(data)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} is malformed: {error}. Delete it or re-run calibration.") from error

    @classmethod
    def _from_json(cls, data: Any) -> CalibrationRecord:
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        temperature = data["temperature"]
        if not _is_number(temperature):
            raise TypeError(f"'temperature' must be a number, got {temperature!r}")
        _check_temperature(temperature)
        rejection = data["rejection"]
        thresholds = data["multi_label_thresholds"]
        if thresholds is not None:
            if not isinstance(thresholds, list) or not all(_is_number(t) for t in thresholds):
                raise TypeError(f"'multi_label_thresholds' must be a list of numbers or null, got {thresholds!r}")
            thresholds = [float(t) for t in thresholds]
        return cls(
            temperature=float(temperature),
            ece_before=_number_or_nan(data["ece_before"], "ece_before"),
            ece_after=_number_or_nan(data["ece_after"], "ece_after"),
            rejection=None if rejection is None else OpenSetRule.from_dict(rejection),
            thresholds=thresholds,
        )


def _negative_log_likelihood(log_temperature: float, logits: np.ndarray, labels: np.ndarray) -> float:
    log_probs = log_softmax(logits / math.exp(log_temperature), axis=1)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def _top1_confidence_and_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return probs.max(axis=1), probs.argmax(axis=1) == labels


def _confidence_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
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


def _check_temperature(temperature: float) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}.")


def _is_number(value: Any) -> bool:
    # numbers.Real also admits NumPy scalars (np.float32 is not a float); bool is a Real but not a score.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _number_or_nan(value: Any, key: str) -> float:
    if value is None:
        return float("nan")
    if not _is_number(value):
        raise TypeError(f"'{key}' must be a number or null, got {value!r}")
    return float(value)
