"""``python -m pipelines.classification PATH... --model M --csv FILE``: classify files, folders and zips into a CSV."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from common.archives import ArchiveError
from common.checkpoints import ModelLoadError
from pipelines.classification.predict import ImageClassifier
from pipelines.classification.records import classify_files, write_predictions_csv
from pipelines.image_files import collect_image_files
from pipelines.runtime import RUNTIME_HELP, RUNTIMES


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: classify files, folders and zip archives into a CSV."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.classification",
        description="Classify images (files, folders or .zip archives of images) and write the top-k classes as CSV.",
    )
    parser.add_argument(
        "paths", nargs="+", help="image files, folders (searched recursively) and/or .zip archives of images"
    )
    parser.add_argument(
        "--model", default="default", help="'default', a checkpoint directory (exported ones too), or a hub id"
    )
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    parser.add_argument("--top-k", type=int, default=5, help="how many classes per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--csv", default="-", help="output CSV path, or - for standard output (default)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="vispect-zip-") as unpacked:
        try:
            files = collect_image_files(args.paths, extract_to=unpacked)
        except ArchiveError as error:
            parser.exit(2, f"error: {error}\n")
        if not files:
            parser.error(f"no files found in {', '.join(args.paths)}")
        try:
            classifier = ImageClassifier.from_pretrained(args.model, runtime=args.runtime)
        except ModelLoadError as error:
            parser.exit(2, f"error: {error}\n")
        rows = classify_files(classifier, files, top_k=args.top_k, batch_size=args.batch_size)
        if args.csv == "-":
            ok, bad = write_predictions_csv(rows, sys.stdout, args.top_k)
        else:
            with open(args.csv, "w", newline="") as out:
                ok, bad = write_predictions_csv(rows, out, args.top_k)
    print(f"classified {ok} image(s), skipped {bad} unreadable file(s)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":  # also run by ``python -m pipelines.classification``
    sys.exit(main())
