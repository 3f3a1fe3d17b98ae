"""scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes) as an upscaled imagefolder.

``load_digits`` ships inside scikit-learn, so this data set needs no download. Layout::

    DIR/train/<digit>/<index>.png        also validation/ and test/; <index> is the row in
    DIR/dataset_info.json                load_digits(), so every file traces back to its scan

Run it with ``python -m train.datasets digits --out DIR``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from datagen.arguments import INFO_NAME, check_seed

GENERATOR_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "validation", "test")
DEFAULT_SPLITS: tuple[float, float, float] = (0.7, 0.15, 0.15)
MIN_SIZE = 8
_MAX_INK = 16  # load_digits counts ink in each 8x8 cell from 0 to 16


def upscale_digit(pixels: np.ndarray, size: int) -> Image.Image:
    """One 8x8 digit with values 0..16 as a ``size`` x ``size`` RGB image of dark ink on white.

    Dark ink on white paper reads like the scanned forms the digits came from, and is what
    ImageNet-pretrained models have seen as writing.
    """
    grey = Image.fromarray(np.round(255 - pixels * (255 / _MAX_INK)).astype(np.uint8), "L")
    return grey.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")


def stratified_split(labels: np.ndarray, splits: Sequence[float], seed: int) -> np.ndarray:
    """Assign every sample to train, validation or test, keeping class proportions in each.

    Args:
        labels: Class of each sample.
        splits: Relative sizes of train, validation and test; they need not add up to 1.
        seed: Seed of the shuffle; the same seed gives the same assignment.

    Returns:
        The split name of each sample, in the order of ``labels``.

    Raises:
        ValueError: If ``splits`` is not three positive numbers.
    """
    if len(splits) != 3 or min(splits) <= 0:
        raise ValueError(f"splits={tuple(splits)} must be three positive fractions for train, validation, test")
    _, validation, test = (fraction / sum(splits) for fraction in splits)
    indices = np.arange(len(labels))
    _, held_out = train_test_split(indices, test_size=validation + test, stratify=labels, random_state=seed)
    _, test_indices = train_test_split(
        held_out, test_size=test / (validation + test), stratify=labels[held_out], random_state=seed
    )
    names = np.full(len(labels), SPLITS[0], dtype=object)
    names[held_out] = SPLITS[1]
    names[test_indices] = SPLITS[2]
    return names


def write_digits(out: str | Path, seed: int = 0, size: int = 64, splits: Sequence[float] = DEFAULT_SPLITS) -> dict:
    """Write scikit-learn's 1,797 real handwritten digits (10 classes), upscaled, to ``out``.

    Files already in ``out`` with the same names are replaced; nothing else is removed.

    Args:
        out: Output directory, created if needed.
        seed: Non-negative seed of the stratified split.
        size: Width and height of the upscaled images, at least :data:`MIN_SIZE`.
        splits: Relative sizes of train, validation and test.

    Returns:
        The contents of ``out/dataset_info.json``: name, seed, size, classes and image counts.

    Raises:
        ValueError: If an argument is out of range; nothing is written then.
    """
    check_seed(seed)
    if size < MIN_SIZE:
        raise ValueError(f"size={size} is smaller than the 8x8 scans; use size >= {MIN_SIZE}")
    digits = load_digits()
    split_names = stratified_split(digits.target, splits, seed)
    classes = [str(label) for label in range(10)]
    counts = {split: dict.fromkeys(classes, 0) for split in SPLITS}
    out = Path(out)
    for index, (pixels, label, split) in enumerate(zip(digits.images, digits.target, split_names)):
        path = out / split / str(label) / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        upscale_digit(pixels, size).save(path, format="PNG")
        counts[split][str(label)] += 1
    info = {
        "name": "digits",
        "generator": __name__,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "splits": dict(zip(SPLITS, (float(f) for f in splits))),
        "classes": classes,
        "counts": counts,
    }
    (out / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return info
