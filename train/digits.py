"""scikit-learn's handwritten digits (real scans, shipped with scikit-learn) as an imagefolder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SPLITS = (0.7, 0.15, 0.15)
SPLITS = ("train", "validation", "test")


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Split index per sample (0, 1, 2), with each class divided in the same proportions."""
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError(f"splits must be three non-negative fractions, got {list(fractions)}")
    fractions = fractions / fractions.sum()
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=int)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.round(np.cumsum(fractions)[:2] * len(members)).astype(int)
        for split, part in enumerate(np.split(members, bounds)):
            assignment[part] = split
    return assignment


def write_digits(out: str | Path, seed: int = 0, size: int = 64, splits: Sequence[float] = DEFAULT_SPLITS) -> dict:
    """Write the 1,797 digits as ``out/<split>/<digit>/<index>.png`` RGB images of ``size`` pixels."""
    from sklearn.datasets import load_digits

    if size < 8:
        raise ValueError(f"size={size} is below the digits' own 8 pixels")
    digits = load_digits()
    assignment = stratified_split(digits.target, splits, seed)
    out = Path(out)
    counts = {split: {str(d): 0 for d in range(10)} for split in SPLITS}
    for index, (pixels, label, split) in enumerate(zip(digits.images, digits.target, assignment)):
        # Values are 0..16 ink; white paper and dark ink read like a scanned form.
        grey = (255 - pixels * (255 / 16)).astype(np.uint8)
        image = Image.fromarray(grey).resize((size, size), Image.BICUBIC).convert("RGB")
        folder = out / SPLITS[split] / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:04d}.png")
        counts[SPLITS[split]][str(label)] += 1
    info = {"name": "digits", "source": "sklearn.datasets.load_digits", "seed": seed, "size": size,
            "classes": [str(d) for d in range(10)], "counts": counts}  # fmt: skip
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return info
