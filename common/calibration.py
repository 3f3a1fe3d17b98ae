"""``calibration.json``: how far to trust a classifier's scores, fitted by training, applied when serving.

Training (``train.classification.calibration``) fits, on the validation split, a temperature
that makes the softmax scores honest (Guo et al. 2017) and a threshold below which an image is
rejected as "unknown" (max softmax probability, Hendrycks & Gimpel 2017; or energy, Liu et al.
2020), and per-class thresholds of a multi-label model. This module is the one reader and
writer of the file and the one definition of how its numbers are applied::

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
from scipy.special import log_softmax, logsumexp

from common.checkpoint_files import CALIBRATION_FILE

OPEN_SET_METHODS = ("max_softmax", "energy")


class CalibrationFileError(ValueError):
    """``calibration.json`` exists but cannot be used; the message names the file and the fix."""


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
            raise ValueError(f"unknown rejection method {self.method!r}; expected one of {OPEN_SET_METHODS}.")
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

    @classmethod
    def uncalibrated(cls) -> CalibrationRecord:
        """What a checkpoint without ``calibration.json`` means: raw scores, never "unknown"."""
        return cls(temperature=1.0, ece_before=math.nan, ece_after=math.nan, rejection=None, thresholds=None)

    @classmethod
    def load_or_uncalibrated(cls, directory: str | os.PathLike | None) -> CalibrationRecord:
        """``load`` for a directory that may have no ``calibration.json`` (or no directory at all)."""
        return (cls.load(directory) if directory else None) or cls.uncalibrated()

    @property
    def calibrated(self) -> bool:
        """True when a temperature was fitted and its calibration error measured."""
        return self.ece_after is not None and math.isfinite(self.ece_after)

    @property
    def rejection_method(self) -> str | None:
        return None if self.rejection is None else self.rejection.method

    @property
    def rejection_threshold(self) -> float | None:
        return None if self.rejection is None else self.rejection.threshold

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities of single-label ``logits``: ``softmax(logits / temperature)``."""
        return softmax(logits, self.temperature)

    def open_set_score(self, logits: np.ndarray) -> np.ndarray | None:
        """Per image: the rejection rule's score (higher = more like the known classes); None without a rule."""
        return None if self.rejection is None else self.rejection.score(logits, self.temperature)

    def is_unknown(self, logits: np.ndarray) -> np.ndarray:
        """Per image: below the rejection threshold (all False without a rule)."""
        scores = self.open_set_score(logits)
        if scores is None:
            return np.zeros(np.shape(logits)[0], dtype=bool)
        return scores < self.rejection.threshold

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
            CalibrationFileError: If the file is not valid JSON or does not have the documented keys and
                types; the message names the file.
        """
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CalibrationFileError(
                f"{path} is malformed: not valid JSON ({error}). Delete it to serve uncalibrated scores, or re-run "
                "calibration."
            ) from error
        try:
            return cls._from_json(data)
        except (KeyError, TypeError, ValueError) as error:
            raise CalibrationFileError(
                f"{path} is malformed: {error}. Delete it to serve uncalibrated scores, or re-run calibration."
            ) from error

    @classmethod
    def _from_json(cls, data: Any) -> CalibrationRecord:
        # Every key but the format's own is optional: a hand-written file with only a stage 1's
        # multi_label_thresholds, or only a temperature, means the neutral value for the rest.
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        temperature = data.get("temperature", 1.0)
        if not _is_number(temperature):
            raise TypeError(f"'temperature' must be a number, got {temperature!r}")
        _check_temperature(temperature)
        rejection = data.get("rejection")
        thresholds = data.get("multi_label_thresholds")
        if thresholds is not None:
            if not isinstance(thresholds, list) or not all(_is_number(t) for t in thresholds):
                raise TypeError(f"'multi_label_thresholds' must be a list of numbers or null, got {thresholds!r}")
            thresholds = [float(t) for t in thresholds]
        return cls(
            temperature=float(temperature),
            ece_before=_number_or_nan(data.get("ece_before"), "ece_before"),
            ece_after=_number_or_nan(data.get("ece_after"), "ece_after"),
            rejection=None if rejection is None else OpenSetRule.from_dict(rejection),
            thresholds=thresholds,
        )


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
