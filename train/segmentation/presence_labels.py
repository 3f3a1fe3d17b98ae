"""Stage-1 data: which defect types each image has, as CSVs for the classification trainer.

    python -m train.segmentation.presence_labels --data_dir data/steel --out data/steel-presence
    python -m train.classification.train --problem_type multi_label \\
        --train_csv data/steel-presence/train.csv --validation_csv data/steel-presence/validation.csv ...

The split is the segmentation trainer's (same ``--validation_fraction`` and ``--seed``), so
stage 1 and the segmenter never see each other's validation images in training. Labels are
the defect names joined by ``;``; a clean image has an empty label (no class present).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from train.segmentation import data as seg


def presence_rows(split, id2label: dict[int, str]) -> list[tuple[str, str]]:
    """``(image path, "name;name")`` for every image of ``split``."""
    rows = []
    for example in split.with_format(None):
        cell = example[seg.IMAGE]
        path = cell.get("path") if isinstance(cell, dict) else cell
        if not path:
            raise seg.DataError(f"Image {example[seg.IMAGE_ID]} has no file path; stage 1 needs image files.")
        names = [id2label[i + 1] for i, present in enumerate(example[seg.DEFECTS]) if present]
        rows.append((str(Path(path).resolve()), ";".join(names)))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.segmentation.presence_labels", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data_dir", required=True, help="Kaggle layout: train.csv + train_images/")
    parser.add_argument("--out", required=True, help="folder for train.csv and validation.csv")
    parser.add_argument("--validation_fraction", type=float, default=0.15, help="as given to the segmenter")
    parser.add_argument("--seed", type=int, default=42, help="as given to the segmenter (Trainer default 42)")
    args = parser.parse_args(argv)
    try:
        data = seg.split_by_image(seg.load_kaggle(Path(args.data_dir)), args.validation_fraction, args.seed)
    except (seg.DataError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train", "validation"):
        rows = presence_rows(data.splits[name], data.id2label)
        with (out / f"{name}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([("path", "label"), *rows])
        print(f"{name}: {len(rows)} images, {sum(bool(label) for _, label in rows)} with defects -> {out / name}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
