"""Write an offline data set a user can train on today.

python -m train.datasets digits --out data/digits
python -m train.datasets parts --out data/parts [--n-per-class 200] [--size 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from train.digits import write_digits
from train.synthetic_parts import write_parts


def _digits(args) -> dict:
    return write_digits(args.out, seed=args.seed, size=args.size or 64, splits=args.splits)


def _parts(args) -> dict:
    return write_parts(args.out, seed=args.seed, size=args.size or 128, n_per_class=args.n or 200, splits=args.splits)


# name -> (writer, one-line description). A new data set is one more entry here.
GENERATORS: dict[str, tuple[Callable, str]] = {
    "digits": (_digits, "scikit-learn's 1,797 real handwritten digits, 10 classes, upscaled"),
    "parts": (_parts, "generated machine parts (6 classes) with object masks, plus non-part 'other' images"),
}


def parse_splits(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"--splits takes three fractions like 0.7,0.15,0.15, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.datasets", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "name", choices=sorted(GENERATORS), help="; ".join(f"{k}: {v[1]}" for k, v in GENERATORS.items())
    )
    parser.add_argument("--out", required=True, help="folder to write (must be empty or new)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    parser.add_argument("--size", type=int, default=None, help="image size in pixels (digits 64, parts 128)")
    parser.add_argument("--n", "--n-per-class", dest="n", type=int, default=None, help="images per class (parts)")
    parser.add_argument("--splits", type=parse_splits, default=(0.7, 0.15, 0.15), help="train,validation,test")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        parser.error(f"--out {out} is not empty; choose a new folder or pass --overwrite to write into it")
    started = time.perf_counter()
    info = GENERATORS[args.name][0](args)
    for split, counts in info.get("counts", {}).items():
        print(f"{split}: {sum(counts.values())} images ({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    for subset, count in info.get("other_counts", {}).items():
        print(f"other/{subset}: {count} images")
    print(f"wrote {args.name} to {out} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
