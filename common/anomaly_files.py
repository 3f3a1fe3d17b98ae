"""An anomaly detector's files: ``anomaly.json`` and the memory banks, one reader and writer each.

The detector's directory is a checkpoint directory like the others: the backbone saved with
``save_pretrained`` (``config.json``, ``model.safetensors``, the image processor), plus

- ``memory_bank.safetensors``: one ``(patches, channels)`` float32 tensor per product, named by
  the product (safetensors only: no pickle is ever loaded);
- ``anomaly.json``: :class:`AnomalyConfig` - which layers are embedded, the input size and
  normalisation, the smoothing, and per product its fitted threshold
  (:mod:`common.anomaly_threshold`) and how it was fitted.

Training writes both with :func:`save_anomaly_model`; ``pipelines.anomaly_detection`` reads them
with :func:`load_anomaly_config` and :func:`load_memory_banks`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common.checkpoint_files import ANOMALY_FILE, MEMORY_BANK_FILE

FORMAT_VERSION = 1
# Product names become tensor names and folder names: keep them to safe characters.
_PRODUCT_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,99}$")


class AnomalyModelError(RuntimeError):
    """A directory that is not a (complete, readable) anomaly detector; the message says why and what to do."""


@dataclass
class ProductRule:
    """One product's fitted rule and what it was fitted on.

    Attributes:
        threshold: Raw image score (a distance) at which the normalised score is 1.0.
        false_reject_rate: The target rate the threshold was fitted for.
        held_out_false_reject_rate: The rate measured on the held-out good images.
        n_train_images: Good images whose patches built the memory bank.
        n_holdout_images: Good images held out to fit the threshold.
        bank_size: Rows of the memory bank after coreset subsampling.
        image_size: The (h, w) of the training images (all had one size).
    """

    threshold: float
    false_reject_rate: float
    held_out_false_reject_rate: float
    n_train_images: int
    n_holdout_images: int
    bank_size: int
    image_size: list[int]


@dataclass
class AnomalyConfig:
    """What inference needs besides the backbone and the banks (``anomaly.json``)."""

    backbone: str
    layers: list[str]
    input_size: list[int]
    mean: list[float]
    std: list[float]
    coreset_ratio: float
    sigma: float
    products: dict[str, ProductRule] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> AnomalyConfig:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["products"] = {name: ProductRule(**rule) for name, rule in data.get("products", {}).items()}
        return cls(**values)


def check_product_name(name: str) -> None:
    """Refuse a product name that cannot name a tensor and a folder.

    Raises:
        ValueError: naming the product and the characters allowed.
    """
    if not _PRODUCT_NAME.match(name):
        raise ValueError(
            f"product name {name!r} must start with a letter or digit and use only letters, digits, '_', '-' and "
            "'.' (at most 100); rename its folder"
        )


def is_anomaly_dir(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds an anomaly detector (``anomaly.json``)."""
    return (Path(directory) / ANOMALY_FILE).is_file()


def save_anomaly_model(directory: str | os.PathLike, config: AnomalyConfig, banks: dict[str, torch.Tensor]) -> None:
    """Write ``anomaly.json`` and ``memory_bank.safetensors`` into ``directory``.

    Raises:
        ValueError: a product with no rule or no bank, or a bad product name.
    """
    if set(banks) != set(config.products):
        raise ValueError(f"memory banks {sorted(banks)} and product rules {sorted(config.products)} differ")
    for name in banks:
        check_product_name(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({name: bank.float().contiguous() for name, bank in banks.items()}, str(directory / MEMORY_BANK_FILE))
    (directory / ANOMALY_FILE).write_text(config.to_json())


def load_anomaly_config(directory: str | os.PathLike) -> AnomalyConfig:
    """Read ``anomaly.json``.

    Raises:
        AnomalyModelError: it is missing, damaged, or from a newer format.
    """
    path = Path(directory) / ANOMALY_FILE
    if not path.is_file():
        raise AnomalyModelError(
            f"'{directory}' has no {ANOMALY_FILE}, so it is not an anomaly detector. Point to the folder written "
            "by python -m train.anomaly_detection."
        )
    try:
        data = json.loads(path.read_text())
        config = AnomalyConfig.from_dict(data)
    except (OSError, ValueError, TypeError) as error:
        raise AnomalyModelError(f"Cannot read {path}: {error}. Train the detector again.") from error
    if config.format_version > FORMAT_VERSION:
        raise AnomalyModelError(
            f"{path} has format version {config.format_version}; this code reads up to {FORMAT_VERSION}. Update it."
        )
    return config


def load_memory_banks(directory: str | os.PathLike, config: AnomalyConfig) -> dict[str, torch.Tensor]:
    """Read every product's memory bank; each must exist and match the config.

    Raises:
        AnomalyModelError: the file is missing or damaged, or a product's bank is missing.
    """
    path = Path(directory) / MEMORY_BANK_FILE
    try:
        banks = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise AnomalyModelError(
            f"Cannot read the memory bank {path}: {error}. Copy the detector again or retrain it."
        ) from error
    missing = sorted(set(config.products) - set(banks))
    if missing:
        raise AnomalyModelError(f"{path} has no memory bank for product(s) {missing}; retrain the detector")
    return {name: banks[name] for name in config.products}
