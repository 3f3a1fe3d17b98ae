"""``python -m pipelines.segmentation PATH... --model M [--stage1 S] --csv FILE``: a Kaggle submission CSV."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from common.checkpoints import ModelLoadError
from pipelines.runtime import RUNTIME_HELP, RUNTIMES
from pipelines.segmentation.predict import DefectSegmenter, MinArea
from pipelines.segmentation.records import write_submission


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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: segment files and folders into a Kaggle submission CSV."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.segmentation",
        description="Segment defects in images (files or folders) and write a Kaggle submission CSV "
        "(ImageId,EncodedPixels,ClassId; one row per image and defect class).",
    )
    parser.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
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
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
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
    try:
        written, skipped = write_submission(
            args.paths, args.csv, segmenter, progress=not args.no_progress, min_area=args.min_area
        )
    except ValueError as error:  # duplicate ImageIds, found before any inference
        parser.error(str(error))
    print(f"segmented {written} image(s) into {args.csv}, skipped {skipped} unreadable file(s)", file=sys.stderr)
    return 0 if written else 1


if __name__ == "__main__":  # also run by ``python -m pipelines.segmentation``
    sys.exit(main())
