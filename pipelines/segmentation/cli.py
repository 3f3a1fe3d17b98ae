"""``python -m pipelines.segmentation PATH... --model M [--stage1 S] --csv FILE``: a Kaggle submission CSV."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from common.archives import ArchiveError
from common.checkpoints import ModelLoadError
from pipelines.image_files import collect_image_files
from pipelines.runtime import RUNTIME_HELP, RUNTIMES
from pipelines.segmentation.predict import DefectSegmenter, MinArea
from pipelines.segmentation.records import (
    check_unique_image_ids,
    segment_files,
    segmentation_record,
    write_records_csv,
    write_submission_rows,
)


def parse_min_area(text: str) -> MinArea:
    """``"500"`` -> 500; ``"1=500,scratches=800"`` -> ``{1: 500, "scratches": 800}``."""
    if "=" not in text:
        return int(text)
    areas: dict[int | str, int] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        areas[int(key) if key.isdigit() else key] = int(value)
    return areas


def _parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def _kept(rows, records: list[dict]):
    """Pass ``rows`` on while keeping each one's small record (masks are not kept: they are large)."""
    for row in rows:
        records.append(segmentation_record(*row))
        yield row


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: segment files, folders and zip archives into a Kaggle submission CSV."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.segmentation",
        description="Segment defects in images (files, folders or .zip archives of images) and write a Kaggle "
        "submission CSV (ImageId,EncodedPixels,ClassId; one row per image and defect class).",
    )
    parser.add_argument(
        "paths", nargs="+", help="image files, folders (searched recursively) and/or .zip archives of images"
    )
    parser.add_argument("--model", required=True, help="segmentation checkpoint directory or hub id")
    parser.add_argument("--stage1", help="multi-label 'which defects are present' classifier checkpoint")
    parser.add_argument("--csv", required=True, help="output CSV path")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    parser.add_argument("--tile-width", type=int, help="run overlapping tiles this wide (multiple of 32)")
    parser.add_argument("--resize-to", type=_parse_size, help="HxW to resize images to, for models trained resized")
    parser.add_argument(
        "--min-area",
        type=parse_min_area,
        default=None,
        help="pixels a class needs to be kept: N, or CLASS=N,CLASS=N (default: the minimums tuned in training)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images read and run through stage 1 together")
    parser.add_argument(
        "--report",
        help="also write one CSV row per image: defective, each type's area and confidence, and the reason an "
        "unreadable file was skipped",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    try:
        segmenter = DefectSegmenter.from_pretrained(
            args.model, stage1=args.stage1, tile_width=args.tile_width, resize_to=args.resize_to, runtime=args.runtime
        )
        segmenter.min_areas(args.min_area)
    except ModelLoadError as error:
        parser.exit(2, f"error: {error}\n")
    except ValueError as error:  # tiling and --min-area options: the message names the fix
        parser.error(str(error))
    with tempfile.TemporaryDirectory(prefix="vispect-zip-") as unpacked:
        try:
            files = collect_image_files(args.paths, extract_to=unpacked)
            check_unique_image_ids(files)
        except ArchiveError as error:
            parser.exit(2, f"error: {error}\n")
        except ValueError as error:  # duplicate ImageIds, found before any inference
            parser.error(str(error))
        rows = segment_files(
            segmenter, files, batch_size=args.batch_size, min_area=args.min_area, progress=not args.no_progress
        )
        records = []
        if args.report:
            rows = _kept(rows, records)
        with open(args.csv, "w", newline="") as out:
            written, skipped = write_submission_rows(rows, out)
        if args.report:
            with open(args.report, "w", newline="") as out:
                write_records_csv(records, out, segmenter.defect_labels)
    print(f"segmented {written} image(s) into {args.csv}, skipped {skipped} unreadable file(s)", file=sys.stderr)
    return 0 if written else 1


if __name__ == "__main__":  # also run by ``python -m pipelines.segmentation``
    sys.exit(main())
