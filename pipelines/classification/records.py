"""Many files through a classifier, as rows, and those rows as CSV.

``classify_files`` batches the model calls and turns an unreadable file into a row with its
reason, so one bad file never stops a folder; ``write_predictions_csv`` writes the rows.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from common.image_io import ImageLoadError, load_image
from pipelines.classification.predict import ImageClassifier


def classify_files(
    classifier: ImageClassifier, files: Sequence[Path], top_k: int = 5, batch_size: int = 8, progress: bool = True
):
    """Yield ``(path, classification, error)`` per file; an unreadable file is reported, not fatal."""
    from tqdm.auto import tqdm

    with tqdm(total=len(files), unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            loaded, failed = [], {}
            for path in chunk:
                try:
                    loaded.append((path, load_image(path)))
                except ImageLoadError as error:
                    failed[path] = str(error)
            results = {}
            if loaded:
                logits = classifier.forward(classifier.preprocess([image for _, image in loaded]))
                results = dict(zip([path for path, _ in loaded], classifier.postprocess(logits, top_k)))
            for path in chunk:
                yield path, results.get(path), failed.get(path)
            bar.update(len(chunk))


def write_predictions_csv(rows, out, top_k: int) -> tuple[int, int]:
    """Write ``classify_files`` rows as CSV; returns (classified, failed) counts."""
    writer = csv.writer(out)
    header = ["path"]
    for rank in range(1, top_k + 1):
        header += [f"label_{rank}", f"score_{rank}"]
    writer.writerow([*header, "unknown", "error"])
    ok = bad = 0
    for path, result, error in rows:
        cells = [str(path)]
        for prediction in result.predictions if result else []:
            cells += [prediction.label, f"{prediction.score:.6f}"]
        cells += [""] * (len(header) - len(cells))
        writer.writerow([*cells, "" if result is None else str(result.unknown).lower(), error or ""])
        if error:
            bad += 1
            print(f"skipped: {error}", file=sys.stderr)
        else:
            ok += 1
    return ok, bad
