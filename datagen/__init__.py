"""Data sets made on this machine, offline: for training demos, benchmarks and tests.

``digits`` is scikit-learn's real handwritten digits written as an imagefolder; ``parts``
(machine parts, "other" images and part masks) and ``steel`` (steel strips with four defect
types in the Kaggle Severstal layout) are drawn from a seed, and so are ``anomaly-steel`` and
``anomaly-parts`` (good and defective images with defect masks in MVTec AD's layout, for anomaly
detection). Training (``python -m
train.datasets NAME``), ``bench/`` and ``tests/`` all use these writers; nothing here trains or
serves a model.
"""

from __future__ import annotations

from collections.abc import Callable

from datagen.anomaly import write_anomaly_parts, write_anomaly_steel
from datagen.digits import write_digits
from datagen.parts import write_parts
from datagen.steel import write_steel

# Name -> writer. Each takes ``out`` and ``seed`` and its own keyword options, and returns the
# summary it also writes as ``dataset_info.json``.
GENERATORS: dict[str, Callable[..., dict]] = {
    "digits": write_digits,
    "parts": write_parts,
    "steel": write_steel,
    "anomaly-steel": write_anomaly_steel,
    "anomaly-parts": write_anomaly_parts,
}
