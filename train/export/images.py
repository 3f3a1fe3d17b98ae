"""Which images calibrate an int8 export and which check it: folders, imagefolders and Kaggle steel.

``--calibration_dir`` is a folder of images searched recursively (an imagefolder is one).
``--eval_dir`` is the same for a classifier, with labels when every image sits in a folder
named after one of the model's labels; for a segmenter it may be a Kaggle-layout folder
(``train.csv`` + ``train_images/``), whose masks give Dice. Without ``--eval_dir`` the
calibration folder's images that calibration does not use are the held-out set.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.image_io import load_image
from common.rle import TRAIN_CSV_NAME
from train.segmentation.data import IMAGE_SUFFIXES, decode_mask, load_kaggle

# Fewer held-out images than this cannot show a 1% disagreement at all.
MIN_HELD_OUT = 10
# Without --eval_dir, this share of the calibration folder is held out (at least MIN_HELD_OUT).
HELD_OUT_SHARE = 0.3
SPLIT_SEED = 0


@dataclass
class HeldOut:
    """The images an export is checked on.

    Attributes:
        files: Image paths, in a fixed order.
        source: Where they came from, for the report.
        labels: A classifier's class index per image (imagefolder), or None.
        masks: A segmenter's class-index truth per image (Kaggle layout), or None.
    """

    files: list[Path]
    source: str
    labels: list[int] | None = None
    masks: list[np.ndarray] | None = None

    def images(self):
        return [load_image(path) for path in self.files]


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every image below ``folder`` (recursively), sorted, skipping hidden files and folders.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory of images")
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def split_calibration(files: list[Path], wanted: int, hold_out: bool) -> tuple[list[Path], list[Path]]:
    """``(calibration, held_out)``: a seeded shuffle of ``files``, at most ``wanted`` for calibration.

    With ``hold_out`` (no --eval_dir) at least ``HELD_OUT_SHARE`` of the files, and no fewer than
    ``MIN_HELD_OUT``, are kept out of calibration to check the export on.
    """
    shuffled = list(files)
    random.Random(SPLIT_SEED).shuffle(shuffled)
    if hold_out:
        keep = max(MIN_HELD_OUT, round(HELD_OUT_SHARE * len(shuffled)))
        wanted = min(wanted, max(len(shuffled) - keep, 0))
    return sorted(shuffled[:wanted]), sorted(shuffled[wanted:]) if hold_out else []


def labels_from_folders(files: list[Path], id2label: dict[int, str]) -> list[int] | None:
    """Class index per file from its parent folder's name (``hex_nut`` matches ``hex nut``), or None.

    None unless every file's folder names a label: a plain folder of photos has no labels.
    """
    by_name = {}
    for index, label in id2label.items():
        by_name[label] = index
        by_name.setdefault(label.replace(" ", "_"), index)
    labels = [by_name.get(path.parent.name) for path in files]
    return None if not labels or any(label is None for label in labels) else labels


def kaggle_held_out(folder: Path, num_classes: int) -> HeldOut:
    """A Kaggle-layout folder (``train.csv`` + ``train_images/``) with its masks decoded."""
    data = load_kaggle(folder, num_classes=num_classes)
    rows = list(data.splits["train"])
    return HeldOut(
        files=[Path(row["image"]) for row in rows],
        source=f"{folder} (Kaggle layout, {len(rows)} images with masks)",
        masks=[decode_mask(row) for row in rows],
    )


def is_kaggle_folder(folder: Path) -> bool:
    return (Path(folder) / TRAIN_CSV_NAME).is_file()
