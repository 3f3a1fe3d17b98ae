"""The reviewed images of the inspection log as an imagefolder the training CLI takes as it is.

    python -m train.datasets reviewed --log-db URL --out DIR [--validation-fraction 0.2] [--seed 0]

Every reviewed classification whose image was stored (the app's ``--store-images``) becomes
``DIR/train/<label>/<sha256>.<ext>`` or ``DIR/validation/<label>/...``, split per class with a
seeded shuffle, beside ``DIR/dataset_info.json``. The label is the review's: the answer when the
reviewer accepted it, the label they set otherwise; an accepted "unknown" (none of the classes)
has no class and is left out. An image decided several times is written once, with its latest
review, so it never sits in both splits. Then:

    python -m train.classification.train --model_name_or_path default \\
        --train_dir DIR/train --validation_dir DIR/validation --output_dir runs/reviewed
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common.inspection_log import InspectionLog, InspectionLogError
from datagen.arguments import INFO_NAME, check_seed
from train.dataset_folders import check_output_folder, format_summary

SPLITS = ("train", "validation")
_UNSAFE = re.compile(r'[/\\:*?"<>|\x00-\x1f]')


class ReviewedDatasetError(ValueError):
    """The log holds nothing that can be written as a training set; the message says what to do."""


@dataclass(frozen=True)
class ReviewedImage:
    """One image to write: where it is stored and the class a reviewer gave it."""

    sha256: str
    path: Path
    label: str
    reviewed_at: datetime


def folder_name(label: str) -> str:
    """``label`` as a class folder name: path separators and control characters become "_"."""
    name = _UNSAFE.sub("_", label).strip()
    return "_" + name if name.startswith(".") or not name else name


def collect_reviewed(log: InspectionLog, task: str = "classify", model: str | None = None) -> tuple[list, dict]:
    """The reviewed images to write (one per image, latest review winning) and what was left out, counted.

    Raises:
        ReviewedDatasetError: nothing reviewed, or no reviewed image stored.
    """
    reviewed = log.reviewed(task=task, model=model)
    what = f"{task} decisions" + (f" of model '{model}'" if model else "")
    if not reviewed:
        raise ReviewedDatasetError(
            f"The inspection log at {log.url} has no reviewed {what}: review flagged decisions on the app's "
            "History tab first (Accept or Set label)."
        )
    left_out = {"no_class": 0, "not_stored": 0, "repeated_image": 0}
    latest: dict[str, ReviewedImage] = {}
    for inspection in reviewed:
        review = inspection.review
        if review.label is None:
            left_out["no_class"] += 1  # an accepted "unknown": none of the classes
            continue
        path = log.image_path(inspection.id)
        if path is None:
            left_out["not_stored"] += 1
            continue
        image = ReviewedImage(inspection.image_sha256, path, review.label, review.created_at)
        previous = latest.get(image.sha256)
        if previous is not None:
            left_out["repeated_image"] += 1
            if previous.reviewed_at > image.reviewed_at:
                continue
        latest[image.sha256] = image
    if not latest:
        raise ReviewedDatasetError(
            f"The inspection log at {log.url} has {len(reviewed)} reviewed {what}, but none with a class and a "
            f"stored image ({left_out['not_stored']} not stored, {left_out['no_class']} accepted as 'unknown'). "
            f"Start the app with --store-images so images are kept (looked for in {log.store_dir}; pass --store "
            "if they are elsewhere)."
        )
    classes = sorted({image.label for image in latest.values()})
    if len(classes) < 2:
        raise ReviewedDatasetError(
            f"All {len(latest)} reviewed images with a stored image are of one class ('{classes[0]}'); a classifier "
            "needs at least two. Review decisions of another class first."
        )
    return sorted(latest.values(), key=lambda image: image.sha256), left_out


def split_per_class(images: list[ReviewedImage], validation_fraction: float, seed: int) -> dict[str, str]:
    """sha256 -> "train" or "validation": per class, a seeded shuffle; every class keeps a training image.

    A class of two or more images gets at least one validation image when ``validation_fraction``
    is above 0, so validation sees every class it can.
    """
    rng = random.Random(seed)
    split = {}
    for label in sorted({image.label for image in images}):
        members = sorted(image.sha256 for image in images if image.label == label)
        rng.shuffle(members)
        n_validation = round(len(members) * validation_fraction)
        if validation_fraction > 0 and len(members) >= 2:
            n_validation = min(max(n_validation, 1), len(members) - 1)
        else:
            n_validation = 0
        for index, sha256 in enumerate(members):
            split[sha256] = "validation" if index < n_validation else "train"
    return split


def export_reviewed(
    log: InspectionLog,
    out: str | Path,
    *,
    validation_fraction: float = 0.2,
    seed: int = 0,
    task: str = "classify",
    model: str | None = None,
) -> dict:
    """Write the reviewed images of ``log`` to ``out`` as train/validation class folders.

    Returns:
        The contents of ``out/dataset_info.json``: source, seed, classes, counts and what was left out.

    Raises:
        ReviewedDatasetError: nothing to write (see :func:`collect_reviewed`) or a bad fraction.
        InspectionLogError: the log cannot be read.
    """
    check_seed(seed)
    if not 0 <= validation_fraction < 1:
        raise ReviewedDatasetError(f"--validation-fraction {validation_fraction} must be at least 0 and below 1")
    images, left_out = collect_reviewed(log, task=task, model=model)
    split = split_per_class(images, validation_fraction, seed)
    classes = sorted({folder_name(image.label) for image in images})
    splits = [name for name in SPLITS if name in split.values()]
    counts = {name: dict.fromkeys(classes, 0) for name in splits}
    out = Path(out)
    for image in images:
        target = out / split[image.sha256] / folder_name(image.label) / image.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image.path, target)
        counts[split[image.sha256]][folder_name(image.label)] += 1
    info = {
        "name": "reviewed",
        "generator": __name__,
        "source": log.url,
        "task": task,
        "model": model,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "validation_fraction": validation_fraction,
        "classes": classes,
        "labels": {folder_name(image.label): image.label for image in images},
        "counts": counts,
        "left_out": left_out,
    }
    (out / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.datasets reviewed",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-db", help="the inspection log's database URL (default: the app's SQLite file)")
    parser.add_argument("--store", type=Path, help="the app's image store folder (default: <data dir>/images)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write; must be new or empty")
    parser.add_argument(
        "--validation-fraction", type=float, default=0.2, help="share of each class for validation (default 0.2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same split (default 0)")
    parser.add_argument("--model", help="only decisions of this model source, as the log records it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_output_folder(args.out, overwrite=False)
        log = InspectionLog.open(args.log_db, store_dir=args.store)
        try:
            info = export_reviewed(
                log, args.out, validation_fraction=args.validation_fraction, seed=args.seed, model=args.model
            )
        finally:
            log.close()
    except (ValueError, InspectionLogError) as error:
        parser.error(str(error))
    print(format_summary(info))
    left_out = info["left_out"]
    if any(left_out.values()):
        print(
            f"left out: {left_out['not_stored']} without a stored image, {left_out['no_class']} accepted as unknown, "
            f"{left_out['repeated_image']} repeats of an image already written"
        )
    print(f"wrote the reviewed images of {info['source']} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
