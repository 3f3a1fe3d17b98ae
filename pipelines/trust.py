"""How far to trust a classifier's answer: calibration and "none of these" rejection.

Training fits these on validation data and saves them beside the weights as
``calibration.json`` (written by ``train/calibration.py``)::

    {"temperature": 1.7, "ece_before": 0.08, "ece_after": 0.02,
     "rejection": {"method": "max_softmax", "threshold": 0.61},
     "multi_label_thresholds": null}

``pipelines/`` reads the file itself (it never imports ``train/``): the checkpoint
directory is the only contract between the two.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

CALIBRATION_FILE = "calibration.json"
REJECTION_METHODS = ("max_softmax", "energy")


class CalibrationFileError(ValueError):
    """``calibration.json`` exists but cannot be used."""


@dataclass(frozen=True)
class TrustSettings:
    """Temperature, rejection rule and multi-label thresholds of one checkpoint."""

    temperature: float = 1.0
    rejection_method: str | None = None
    rejection_threshold: float | None = None
    multi_label_thresholds: tuple[float, ...] | None = None
    ece_before: float | None = None
    ece_after: float | None = None

    @property
    def calibrated(self) -> bool:
        return self.ece_after is not None

    @classmethod
    def load(cls, directory: str | os.PathLike | None) -> TrustSettings:
        """Settings from ``directory/calibration.json``; neutral settings when there is none."""
        path = Path(directory) / CALIBRATION_FILE if directory else None
        if path is None or not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
            rejection = raw.get("rejection") or {}
            settings = cls(
                temperature=float(raw.get("temperature", 1.0)),
                rejection_method=rejection.get("method"),
                rejection_threshold=None if rejection.get("threshold") is None else float(rejection["threshold"]),
                multi_label_thresholds=tuple(map(float, raw["multi_label_thresholds"]))
                if raw.get("multi_label_thresholds")
                else None,
                ece_before=raw.get("ece_before"),
                ece_after=raw.get("ece_after"),
            )
        except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError, KeyError) as error:
            raise CalibrationFileError(
                f"{path} is malformed ({error}). Delete it to serve uncalibrated scores, or retrain to rewrite it."
            ) from error
        if not (settings.temperature > 0 and math.isfinite(settings.temperature)):
            raise CalibrationFileError(f"{path}: temperature must be a positive number, got {settings.temperature}.")
        if settings.rejection_method not in (None, *REJECTION_METHODS):
            raise CalibrationFileError(
                f"{path}: unknown rejection method {settings.rejection_method!r}; expected one of {REJECTION_METHODS}."
            )
        return settings

    def open_set_score(self, logits: torch.Tensor) -> torch.Tensor:
        """Per image: higher means "more like the known classes" (same rule as training)."""
        scaled = logits.float() / self.temperature
        if self.rejection_method == "energy":
            return self.temperature * torch.logsumexp(scaled, dim=-1)
        return scaled.softmax(dim=-1).max(dim=-1).values

    def is_unknown(self, logits: torch.Tensor) -> torch.Tensor:
        """Boolean per image: below the rejection threshold (all False without a rule)."""
        if self.rejection_method is None or self.rejection_threshold is None:
            return torch.zeros(logits.shape[0], dtype=torch.bool)
        return self.open_set_score(logits) < self.rejection_threshold
