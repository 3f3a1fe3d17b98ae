"""Segmentations as Kaggle (Severstal) submission rows, and a folder of images as a submission CSV."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from common.image_io import ImageLoadError
from common.rle import SUBMISSION_HEADER
from pipelines.image_files import iter_image_files
from pipelines.segmentation.predict import DefectSegmenter, MinArea, Segmentation


def submission_rows(image_id: str, segmentation: Segmentation) -> list[tuple[str, str, int]]:
    """``(ImageId, EncodedPixels, ClassId)`` for every defect class; EncodedPixels is "" when absent."""
    return [(image_id, region.rle, region.class_id) for region in segmentation.regions]


def write_submission(
    folder_or_files: str | os.PathLike | Sequence[str | os.PathLike],
    out_csv: str | os.PathLike,
    segmenter: DefectSegmenter,
    progress: bool = True,
    *,
    min_area: MinArea | None = None,
) -> tuple[int, int]:
    """Segment a folder (recursively) or files into a Kaggle CSV: ``ImageId,EncodedPixels,ClassId``.

    The ImageId is the file name, as in Severstal. An unreadable file is reported on stderr
    and counted, and gets no rows: empty rows would claim it has no defects.

    Returns:
        ``(written, skipped)`` image counts.

    Raises:
        ValueError: two files share a name (so an ImageId), or ``min_area`` is invalid.
    """
    from tqdm.auto import tqdm

    segmenter.min_areas(min_area)  # a bad option fails before the first image, not after an hour
    paths = [folder_or_files] if isinstance(folder_or_files, (str, os.PathLike)) else list(folder_or_files)
    files = iter_image_files(paths)
    first_seen: dict[str, Path] = {}
    for path in files:
        if path.name in first_seen:
            raise ValueError(
                f"Two images would share the ImageId '{path.name}': {first_seen[path.name]} and {path}. "
                "Kaggle needs unique file names; segment the folders separately."
            )
        first_seen[path.name] = path
    written = skipped = 0
    with open(out_csv, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(SUBMISSION_HEADER)
        for path in tqdm(files, unit="img", disable=not progress):
            try:
                segmentation = segmenter.segment(path, min_area=min_area)
            except ImageLoadError as error:
                print(f"skipped: {error}", file=sys.stderr)
                skipped += 1
                continue
            writer.writerows(submission_rows(path.name, segmentation))
            written += 1
    return written, skipped
