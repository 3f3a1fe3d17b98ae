"""``python -m pipelines.anomaly_detection PATH... --model DIR --csv FILE``: one CSV row per image."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from common.archives import ArchiveError
from common.checkpoints import ModelLoadError
from pipelines.anomaly_detection.predict import AnomalyDetector
from pipelines.anomaly_detection.records import detect_files, write_results_csv
from pipelines.image_files import collect_image_files


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: score files, folders and zip archives with an anomaly detector into a CSV."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.anomaly_detection",
        description="Score images (files, folders searched recursively, or .zip archives) with an anomaly detector "
        "trained on good images, and write one CSV row per image: path, product, score (1.0 = the threshold), "
        "anomalous, raw score, threshold, anomalous area and the reason an unreadable file was skipped.",
    )
    parser.add_argument("paths", nargs="+", help="image files, folders (searched recursively) and/or .zip archives")
    parser.add_argument(
        "--model", required=True, help="detector directory written by python -m train.anomaly_detection"
    )
    parser.add_argument("--csv", required=True, help="output CSV path")
    parser.add_argument("--product", help="which product's memory bank to use (needed when the detector has several)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    try:
        detector = AnomalyDetector.from_pretrained(args.model)
        detector.resolve_product(args.product)
    except ModelLoadError as error:
        parser.exit(2, f"error: {error}\n")
    except ValueError as error:  # the product: the message lists the detector's products
        parser.error(f"--product: {error}")
    with tempfile.TemporaryDirectory(prefix="vispect-zip-") as unpacked:
        try:
            files = collect_image_files(args.paths, extract_to=unpacked)
        except ArchiveError as error:
            parser.exit(2, f"error: {error}\n")
        rows = detect_files(
            detector, files, product=args.product, batch_size=args.batch_size, progress=not args.no_progress
        )
        with open(args.csv, "w", newline="") as out:
            scored, failed = write_results_csv(rows, out)
    print(f"scored {scored} image(s) into {args.csv}, {failed} unreadable file(s)", file=sys.stderr)
    return 0 if scored else 1


if __name__ == "__main__":  # also run by ``python -m pipelines.anomaly_detection``
    sys.exit(main())
