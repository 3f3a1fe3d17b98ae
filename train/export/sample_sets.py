"""Offline calibration and held-out folders for exporting the default (ImageNet) classifier.

    python -m train.export.sample_sets build/export-images

writes ``calibration/`` (244 generated machine parts and non-part scenes, ``datagen.parts``
seed 0) and ``held-out/`` (scikit-image's 26 bundled photographs of at least 64 pixels, plus 96
generated images with seed 1, none seen in calibration). ImageNet itself is not on this
machine; these are few and partly far from ImageNet (generated parts, a chessboard, text),
so many held-out answers are near ties that any change of arithmetic can swap, which the
parity report counts as ``near_ties``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from datagen.parts import MASKS_DIR, write_parts

CALIBRATION_DIR = "calibration"
HELD_OUT_DIR = "held-out"
MIN_PHOTO_SIDE = 64
PART_SIZE = 192


def _skimage_photos() -> list[Path]:
    try:
        import skimage
    except ImportError:
        return []
    folder = Path(skimage.__file__).parent / "data"
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in {".png", ".jpg"})


def _copy_parts(seed: int, n_per_class: int, n_other: int, out: Path, prefix: str) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        write_parts(scratch, seed=seed, size=PART_SIZE, n_per_class=n_per_class, n_other=n_other)
        images = [p for p in sorted(Path(scratch).rglob("*.png")) if MASKS_DIR not in p.relative_to(scratch).parts]
        for path in images:
            shutil.copy(path, out / f"{prefix}_{path.parent.name}_{path.name}")
    return len(images)


def write_sample_sets(out: str | Path) -> dict[str, int]:
    """Write ``out/calibration`` and ``out/held-out``; returns how many images each holds."""
    out = Path(out)
    calibration, held_out = out / CALIBRATION_DIR, out / HELD_OUT_DIR
    for folder in (calibration, held_out):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    photos = 0
    for path in _skimage_photos():
        with Image.open(path) as image:
            if min(image.size) >= MIN_PHOTO_SIDE:
                image.convert("RGB").save(held_out / f"photo_{path.stem}.png")
                photos += 1
    parts = _copy_parts(1, 14, 12, held_out, "parts1")
    return {
        CALIBRATION_DIR: _copy_parts(0, 34, 40, calibration, "parts0"),
        HELD_OUT_DIR: photos + parts,
        "photos": photos,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export.sample_sets", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the folder to write calibration/ and held-out/ into")
    counts = write_sample_sets(parser.parse_args(argv).out)
    print(", ".join(f"{name}: {count} images" for name, count in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
