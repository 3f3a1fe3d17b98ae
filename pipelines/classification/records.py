"""Many files through a classifier, as rows, and those rows as CSV or JSON.

``classify_files`` batches the model calls and turns an unreadable file into a row with its
reason, so one bad file never stops a folder; ``write_predictions_csv`` and
``write_predictions_json`` write the rows, and ``needs_review`` is the rule that flags one.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from common.image_io import MAX_FILE_BYTES, ImageLoadError, load_image
from pipelines.classification.predict import Classification, ImageClassifier
from pipelines.image_files import ImageFile

ClassifiedRow = tuple[Path | ImageFile, Classification | None, str | None]


def file_label(file: str | Path | ImageFile) -> str:
    """The name a row shows: an ``ImageFile``'s name, else the path as given."""
    return file.name if isinstance(file, ImageFile) else str(file)


def load_batch_image(file: str | Path | ImageFile, max_bytes: int = MAX_FILE_BYTES):
    """The RGB image of one batch file, or the reason it cannot be read (named as the row shows it).

    Returns:
        ``(image, None)`` or ``(None, reason)``.
    """
    if isinstance(file, ImageFile):
        if file.error is not None or file.path is None:
            return None, f"Cannot read image '{file.name}': {file.error}"
        try:
            return load_image(file.path, max_bytes=max_bytes), None
        except ImageLoadError as error:  # name the member, not the temp folder it was unpacked into
            return None, f"Cannot read image '{file.name}': {error.reason}"
    try:
        return load_image(file, max_bytes=max_bytes), None
    except ImageLoadError as error:
        return None, str(error)


def classify_files(
    classifier: ImageClassifier,
    files: Sequence[Path | ImageFile],
    top_k: int = 5,
    batch_size: int = 8,
    progress: bool = True,
    max_bytes: int = MAX_FILE_BYTES,
) -> Iterator[ClassifiedRow]:
    """Yield ``(file, classification, error)`` per file, in order; an unreadable file is reported, not fatal.

    Files are read and classified ``batch_size`` at a time (one forward pass per batch); the
    rows of a batch are yielded together once its forward pass is done.

    Args:
        classifier: The loaded classifier; its calibration and "unknown" rule apply.
        files: Paths, or ``pipelines.image_files.ImageFile`` s (zip members carry their own name).
        top_k: Classes kept per image.
        batch_size: Images per forward pass.
        progress: Show a tqdm bar on stderr.
        max_bytes: Largest image file accepted.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    with tqdm(total=len(files), unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            loaded = [load_batch_image(file, max_bytes) for file in chunk]
            images = [image for image, _ in loaded if image is not None]
            # One forward pass for the readable images of the batch; rows keep the files' order.
            logits = classifier.forward(classifier.preprocess(images)) if images else None
            results = iter(classifier.postprocess(logits, top_k) if images else [])
            for file, (image, error) in zip(chunk, loaded):
                yield file, None if image is None else next(results), error
            bar.update(len(chunk))


def needs_review(classification: Classification | None, error: str | None, min_confidence: float = 0.0) -> bool:
    """The flag of one row: unreadable, "unknown", or a top score below ``min_confidence``."""
    if error or classification is None:
        return True
    return classification.unknown or classification.predictions[0].score < min_confidence


def prediction_record(
    file: str | Path | ImageFile,
    classification: Classification | None,
    error: str | None,
    min_confidence: float | None = None,
) -> dict:
    """One row as plain JSON-ready data: the answer, its score, the ranked classes and the verdicts."""
    best = classification.predictions[0] if classification else None
    record = {
        "file": file_label(file),
        "label": best.label if best else None,
        "score": best.score if best else None,
        "unknown": classification.unknown if classification else None,
        "open_set_score": classification.open_set_score if classification else None,
        "threshold": classification.threshold if classification else None,
        "predictions": [{"label": p.label, "score": p.score} for p in classification.predictions]
        if classification
        else [],
    }
    if min_confidence is not None:
        record["flagged"] = needs_review(classification, error, min_confidence)
    record["error"] = error
    return record


def write_predictions_csv(
    rows: Iterable[ClassifiedRow],
    out,
    top_k: int,
    min_confidence: float | None = None,
    report_errors: bool = True,
) -> tuple[int, int]:
    """Write ``classify_files`` rows as CSV; returns (classified, failed) counts.

    Args:
        rows: ``(file, classification, error)`` rows.
        out: A text file open for writing (``newline=""``).
        top_k: The number of ``label_N``/``score_N`` column pairs.
        min_confidence: When given, a ``flagged`` column (``needs_review`` at this confidence).
        report_errors: Print a "skipped" line on stderr for each unreadable file (command lines).
    """
    writer = csv.writer(out)
    header = ["path"]
    for rank in range(1, top_k + 1):
        header += [f"label_{rank}", f"score_{rank}"]
    writer.writerow([*header, "unknown", *(["flagged"] if min_confidence is not None else []), "error"])
    ok = bad = 0
    for path, result, error in rows:
        cells = [file_label(path)]
        for prediction in result.predictions[:top_k] if result else []:
            cells += [prediction.label, f"{prediction.score:.6f}"]
        cells += [""] * (len(header) - len(cells))
        cells.append("" if result is None else str(result.unknown).lower())
        if min_confidence is not None:
            cells.append(str(needs_review(result, error, min_confidence)).lower())
        writer.writerow([*cells, error or ""])
        if error:
            bad += 1
            if report_errors:
                print(f"skipped: {error}", file=sys.stderr)
        else:
            ok += 1
    return ok, bad


def write_predictions_json(rows: Iterable[ClassifiedRow], out, min_confidence: float | None = None) -> tuple[int, int]:
    """Write ``classify_files`` rows as a JSON list of ``prediction_record`` s; returns (classified, failed)."""
    records = [prediction_record(file, result, error, min_confidence) for file, result, error in rows]
    json.dump(records, out, indent=2)
    out.write("\n")
    failed = sum(1 for record in records if record["error"])
    return len(records) - failed, failed
