"""Many images through a segmenter, as rows: Kaggle (Severstal) submission rows, and per-image
records (defective or not, each defect type's area and confidence, the reason an image could
not be read) as CSV or JSON.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence

from common.image_io import MAX_FILE_BYTES, ImageLoadError, load_image
from common.rle import SUBMISSION_HEADER
from pipelines.image_files import ImageFile, collect_image_files
from pipelines.segmentation.predict import DefectSegmenter, MinArea, Segmentation

SegmentedRow = tuple[ImageFile, Segmentation | None, str | None]


def submission_rows(image_id: str, segmentation: Segmentation) -> list[tuple[str, str, int]]:
    """``(ImageId, EncodedPixels, ClassId)`` for every defect class; EncodedPixels is "" when absent."""
    return [(image_id, region.rle, region.class_id) for region in segmentation.regions]


def _read(file: ImageFile, max_bytes: int):
    """``(image, None)`` or ``(None, reason)``, the reason naming the file as the row shows it."""
    if file.error is not None or file.path is None:
        return None, f"Cannot read image '{file.name}': {file.error}"
    try:
        return load_image(file.path, max_bytes=max_bytes), None
    except ImageLoadError as error:
        return None, f"Cannot read image '{file.name}': {error.reason}"


def segment_files(
    segmenter: DefectSegmenter,
    files: Sequence[ImageFile],
    *,
    batch_size: int = 8,
    min_area: MinArea | None = None,
    progress: bool = True,
    max_bytes: int = MAX_FILE_BYTES,
) -> Iterator[SegmentedRow]:
    """Yield ``(file, segmentation, error)`` per file, in order; an unreadable file is reported, not fatal.

    ``batch_size`` images are read at a time and go through ``segment_batch`` together: stage 1
    classifies them in one forward pass, and the segmenter's tiles run ``tile_batch`` at a time.

    Raises:
        ValueError: ``min_area`` or ``batch_size`` is invalid (before the first image).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    segmenter.min_areas(min_area)  # a bad option fails before the first image, not after an hour
    with tqdm(total=len(files), unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            loaded = [_read(file, max_bytes) for file in chunk]
            images = [image for image, _ in loaded if image is not None]
            results = iter(segmenter.segment_batch(images, min_area=min_area) if images else ())
            for file, (image, error) in zip(chunk, loaded):
                yield file, None if image is None else next(results), error
            bar.update(len(chunk))


def check_unique_image_ids(files: Sequence[ImageFile]) -> None:
    """Kaggle's ImageId is the file name: refuse two files that would share one.

    Raises:
        ValueError: naming both files.
    """
    first_seen: dict[str, str] = {}
    for file in files:
        if file.file_name in first_seen:
            raise ValueError(
                f"Two images would share the ImageId '{file.file_name}': {first_seen[file.file_name]} and "
                f"{file.name}. Kaggle needs unique file names; segment the folders separately."
            )
        first_seen[file.file_name] = file.name


def defect_confidence(segmentation: Segmentation) -> float | None:
    """How sure the answer is, from 0 to 1.

    Defective: the mean confidence over all defect pixels. Clean, with a stage 1: one minus the
    highest stage-1 defect probability. Clean without stage 1: None (nothing to measure).
    """
    present = [region for region in segmentation.regions if region.present]
    if present:
        area = sum(region.area_fraction for region in present)
        return sum(region.confidence * region.area_fraction for region in present) / area
    if segmentation.stage1:
        return 1.0 - max(segmentation.stage1.values())
    return None


def needs_review(segmentation: Segmentation | None, error: str | None, min_confidence: float = 0.0) -> bool:
    """The flag of one row: unreadable, defective, or an answer less sure than ``min_confidence``."""
    if error or segmentation is None:
        return True
    confidence = defect_confidence(segmentation)
    return segmentation.defective or (confidence is not None and confidence < min_confidence)


def segmentation_record(
    file: ImageFile, segmentation: Segmentation | None, error: str | None, min_confidence: float | None = None
) -> dict:
    """One row as plain JSON-ready data: defective or not, and each defect type's area and confidence."""
    record = {
        "file": file.name,
        "image_id": file.file_name,
        "defective": segmentation.defective if segmentation else None,
        "confidence": defect_confidence(segmentation) if segmentation else None,
        "defects": {
            region.label: {
                "class_id": region.class_id,
                "area_fraction": region.area_fraction,
                "pixels": int(region.mask.sum()),
                "confidence": region.confidence,
                "ruled_out_by_stage1": region.ruled_out,
            }
            for region in segmentation.regions
        }
        if segmentation
        else {},
        "stage1": segmentation.stage1 if segmentation else None,
    }
    if min_confidence is not None:
        record["flagged"] = needs_review(segmentation, error, min_confidence)
    record["error"] = error
    return record


def write_records_csv(records: Sequence[dict], out, labels: Sequence[str]) -> None:
    """``segmentation_record`` s as CSV: one row per image; area fraction, pixels and confidence per defect type."""
    writer = csv.writer(out)
    flagged = any("flagged" in record for record in records)
    per_class = [f"{label}_{column}" for label in labels for column in ("area_fraction", "pixels", "confidence")]
    writer.writerow(
        ["file", "image_id", "defective", "confidence", *per_class, *(["flagged"] if flagged else []), "error"]
    )
    for record in records:
        cells = [record["file"], record["image_id"], _cell(record["defective"]), _cell(record["confidence"])]
        for label in labels:
            defect = record["defects"].get(label)
            cells += [_cell(defect[c]) if defect else "" for c in ("area_fraction", "pixels", "confidence")]
        if flagged:
            cells.append(_cell(record.get("flagged")))
        writer.writerow([*cells, record["error"] or ""])


def write_records_json(records: Sequence[dict], out) -> None:
    """``segmentation_record`` s as a JSON list."""
    json.dump(list(records), out, indent=2)
    out.write("\n")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def write_submission_rows(rows: Iterable[SegmentedRow], out, report_errors: bool = True) -> tuple[int, int]:
    """Write segmented rows as a Kaggle CSV (``ImageId,EncodedPixels,ClassId``); returns (written, skipped).

    An unreadable file gets no rows (empty rows would claim it has no defects); with
    ``report_errors`` its reason goes to stderr.
    """
    writer = csv.writer(out)
    writer.writerow(SUBMISSION_HEADER)
    written = skipped = 0
    for file, segmentation, error in rows:
        if segmentation is None:
            skipped += 1
            if report_errors:
                print(f"skipped: {error}", file=sys.stderr)
            continue
        writer.writerows(submission_rows(file.file_name, segmentation))
        written += 1
    return written, skipped


def write_submission(
    folder_or_files: str | os.PathLike | Sequence[str | os.PathLike | ImageFile],
    out_csv: str | os.PathLike,
    segmenter: DefectSegmenter,
    progress: bool = True,
    *,
    min_area: MinArea | None = None,
    batch_size: int = 8,
) -> tuple[int, int]:
    """Segment a folder (recursively) or files into a Kaggle CSV: ``ImageId,EncodedPixels,ClassId``.

    The ImageId is the file name, as in Severstal. An unreadable file is reported on stderr
    and counted, and gets no rows: empty rows would claim it has no defects. Zip archives must
    be unpacked first (``pipelines.image_files.collect_image_files``), as the command line does.

    Returns:
        ``(written, skipped)`` image counts.

    Raises:
        ValueError: two files share a name (so an ImageId), or ``min_area`` is invalid.
    """
    segmenter.min_areas(min_area)
    items = [folder_or_files] if isinstance(folder_or_files, (str, os.PathLike)) else list(folder_or_files)
    files = collect_image_files(items)
    check_unique_image_ids(files)
    rows = segment_files(segmenter, files, batch_size=batch_size, min_area=min_area, progress=progress)
    with open(out_csv, "w", newline="") as out:
        return write_submission_rows(rows, out)
