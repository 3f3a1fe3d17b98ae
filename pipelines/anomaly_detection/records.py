"""Many images through an anomaly detector, as rows, and the rows as CSV."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence

from common.image_io import MAX_FILE_BYTES, ImageLoadError, load_image
from pipelines.anomaly_detection.predict import AnomalyDetector, AnomalyResult
from pipelines.image_files import ImageFile

DetectedRow = tuple[ImageFile, AnomalyResult | None, str | None]
CSV_COLUMNS = ("path", "product", "score", "anomalous", "raw_score", "threshold", "area_fraction", "error")


def _read(file: ImageFile, max_bytes: int):
    """``(image, None)`` or ``(None, reason)``, the reason naming the file as the row shows it."""
    if file.error is not None or file.path is None:
        return None, f"Cannot read image '{file.name}': {file.error}"
    try:
        return load_image(file.path, max_bytes=max_bytes), None
    except ImageLoadError as error:
        return None, f"Cannot read image '{file.name}': {error.reason}"


def detect_files(
    detector: AnomalyDetector,
    files: Sequence[ImageFile],
    *,
    product: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
    max_bytes: int = MAX_FILE_BYTES,
) -> Iterator[DetectedRow]:
    """Yield ``(file, result, error)`` per file, in order; an unreadable file is reported, not fatal.

    Raises:
        ValueError: a bad ``batch_size`` or product (before the first image).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    detector.resolve_product(product)  # a wrong product fails before the first image, not after an hour
    with tqdm(total=len(files), unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            loaded = [_read(file, max_bytes) for file in chunk]
            images = [image for image, _ in loaded if image is not None]
            results = iter(detector.detect_batch(images, product) if images else ())
            for file, (image, error) in zip(chunk, loaded):
                yield file, None if image is None else next(results), error
            bar.update(len(chunk))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def write_results_csv(rows: Iterable[DetectedRow], out) -> tuple[int, int]:
    """One CSV row per image (:data:`CSV_COLUMNS`); returns (scored, unreadable).

    An unreadable file gets a row with only its path and error: an empty verdict, never "good".
    """
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    scored = failed = 0
    for file, result, error in rows:
        if result is None:
            failed += 1
            writer.writerow([file.name, "", "", "", "", "", "", error or ""])
            continue
        scored += 1
        writer.writerow(
            [
                file.name,
                result.product,
                _cell(result.score),
                _cell(result.anomalous),
                _cell(result.raw_score),
                _cell(result.threshold),
                _cell(result.area_fraction),
                "",
            ]
        )
    return scored, failed
