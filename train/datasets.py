"""Write an offline data set as an imagefolder a user can train on today.

    python -m train.datasets digits --out data/digits
    python -m train.datasets parts --out data/parts [--n-per-class 200] [--size 128] [--seed 0]
    python -m train.datasets anomaly-steel --out data/anomaly-steel [--n 200] [--n-per-class 10] [--height 128]
    python -m train.datasets reviewed --log-db URL --out data/reviewed [--validation-fraction 0.2] [--seed 0]

Both write ``DIR/{train,validation,test}/<class>/<name>.png`` and ``DIR/dataset_info.json``, so
``datasets.load_dataset("imagefolder", data_dir=DIR)`` returns the three labelled splits.
``parts`` also writes masks and non-part images; see :mod:`datagen.parts`. ``anomaly-steel`` and
``anomaly-parts`` write MVTec AD's layout instead (good and defective images with defect masks,
for anomaly detection); see :mod:`datagen.anomaly`. ``reviewed`` writes
the images people reviewed in the app's inspection log (train and validation only); see
:mod:`train.reviewed`.

A data set is a writer function in :data:`datagen.GENERATORS`. The CLI passes ``out`` and ``seed`` and
only the options the user gave (``size``, ``n_per_class``, ``splits``), as keywords, so each
writer keeps its own defaults. Registering a writer with that signature is one line.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from datagen import GENERATORS
from datagen.arguments import INFO_NAME
from train.dataset_folders import check_output_folder, format_summary

# What --overwrite replaces: PNGs under these folders and the info file, as written by the
# generators above. Stale images from an earlier run would otherwise stay in the data set
# (a digit that moved from train to test with a new seed would sit in both). Anything else
# in --out is the user's and is never touched.
LAYOUT_FOLDERS: tuple[str, ...] = ("train", "validation", "test", "masks", "other", "ground_truth")

# Not a generator: the images reviewed in the app's inspection log (train.reviewed).
REVIEWED = "reviewed"

# CLI option -> writer keyword, for the options that are passed only when given.
_OPTIONAL_KEYWORDS = {
    "--size": "size",
    "--n-per-class": "n_per_class",
    "--splits": "splits",
    "--n": "n",
    "--height": "height",
    "--width": "width",
    "--clean-fraction": "clean_fraction",
}


def parse_splits(text: str) -> tuple[float, float, float]:
    """Parse ``--splits`` (``"0.7,0.15,0.15"``) into train, validation and test fractions."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not three positive fractions adding up to 1; pass train,validation,test like 0.7,0.15,0.15"
        )
    return values


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be a non-negative integer")
    return value


def _describe(write: Callable[..., dict]) -> str:
    """The first line of the writer's module docstring, which says what the data set is."""
    return inspect.getdoc(inspect.getmodule(write)).splitlines()[0].rstrip(".")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.datasets",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="data sets:\n"
        + "\n".join(f"  {name}: {_describe(w)}" for name, w in GENERATORS.items())
        + f"\n  {REVIEWED}: The reviewed images of the app's inspection log (first argument; see: {REVIEWED} --help)",
    )
    parser.add_argument("name", choices=sorted(GENERATORS), help=f"which data set to write ({REVIEWED}: see below)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write; must be new or empty")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="same seed, same files (default 0)")
    parser.add_argument("--size", type=_positive_int, help="image width and height (default: digits 64, parts 128)")
    parser.add_argument("--n-per-class", type=_positive_int, help="images per class for generated sets (parts: 200)")
    parser.add_argument("--splits", type=parse_splits, help="train,validation,test fractions (default 0.7,0.15,0.15)")
    parser.add_argument("--n", type=_positive_int, help="number of images (steel: 200)")
    parser.add_argument("--height", type=_positive_int, help="image height (steel: 256)")
    parser.add_argument("--width", type=_positive_int, help="image width (steel: 1600)")
    parser.add_argument("--clean-fraction", type=float, help="share of images without defects (steel: 0.45)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"write into a non-empty --out, replacing the PNGs under {', '.join(LAYOUT_FOLDERS)} and {INFO_NAME}",
    )
    return parser


def writer_options(name: str, args: argparse.Namespace) -> dict:
    """Keyword arguments for the writer of ``name``: the options given that it accepts.

    Raises:
        ValueError: If an option was given that the writer has no parameter for.
    """
    accepted = inspect.signature(GENERATORS[name]).parameters
    options = {"seed": args.seed}
    for flag, keyword in _OPTIONAL_KEYWORDS.items():
        value = getattr(args, keyword)
        if value is None:
            continue
        if keyword not in accepted:
            raise ValueError(f"{flag} does not apply to {name!r} (its writer has no {keyword!r}); drop {flag}")
        options[keyword] = value
    if args.overwrite and "overwrite" in accepted:
        options["overwrite"] = True  # the writer knows which of its own files to replace
    return options


def clear_previous_dataset(out: Path) -> int:
    """Delete what an earlier run wrote to ``out`` (see :data:`LAYOUT_FOLDERS`); return the count."""
    removed = 0
    for folder in (out / name for name in LAYOUT_FOLDERS):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.png")):
            path.unlink()
            removed += 1
        # Deepest first, and only folders that are now empty: a user's own files keep theirs.
        for directory in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(directory.iterdir()):
                directory.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()
    if (out / INFO_NAME).is_file():
        (out / INFO_NAME).unlink()
        removed += 1
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [REVIEWED]:  # its own options: it reads the log instead of generating
        from train.reviewed import main as write_reviewed

        return write_reviewed(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = writer_options(args.name, args)
        check_output_folder(args.out, args.overwrite)
    except ValueError as error:
        parser.error(str(error))
    if args.overwrite and args.out.is_dir():
        removed = clear_previous_dataset(args.out)
        if removed:
            print(f"--overwrite: removed {removed} files of the previous data set in {args.out}", file=sys.stderr)
    started = time.perf_counter()
    try:
        info = GENERATORS[args.name](args.out, **options)
    except ValueError as error:
        # Writers check their arguments before writing anything and name the fix; an option
        # that is fine on its own can still be wrong for a writer (--n-per-class 3 with three splits).
        parser.error(str(error))
    print(format_summary(info))
    print(f"wrote {args.name} to {args.out} in {time.perf_counter() - started:.1f} s (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
