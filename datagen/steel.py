"""Generated steel-strip images with surface defects, written in the Kaggle Severstal layout.

:func:`draw_steel` draws one grey rolled-steel image (streaks along the rolling direction,
uneven lighting, sensor noise, sometimes the dark edge of the strip, faint stains and roll
marks that are *not* defects) with zero or more defects of four classes:

=====  ==========  ====================================================================
Class  Name        Look
=====  ==========  ====================================================================
1      pitting     clusters of small dark (sometimes bright) dots
2      crazing     a patch of fine, short, dark zig-zag cracks
3      scratches   long thin bright or dark lines roughly along the strip (horizontal)
4      patches     large irregular darker blobs with soft edges
=====  ==========  ====================================================================

and returns the image with a class-index mask (0 clean, 1-4 the class). :func:`write_steel`
writes a data set as Kaggle does::

    DIR/train_images/0a1b2c3d4.jpg      JPEG quality 95, 9 hex characters + ".jpg"
    DIR/train.csv                       ImageId,ClassId,EncodedPixels (see common.rle)
    DIR/dataset_info.json               seed, size, class names and counts

``train.csv`` has one row per (image, class present) and none for clean images, like the
newer Kaggle file; loaders treat images in ``train_images/`` without a row as clean.

Image ``i`` is drawn from its own generator seeded with ``(seed, i)``, so the same seed gives
byte-identical files and a larger ``n`` only adds images.

Run ``python -m train.datasets steel --out DIR --n 200 --seed 0`` to write a set.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.rle import TRAIN_CSV_HEADER, TRAIN_CSV_NAME, TRAIN_IMAGES_DIR, rle_decode, rle_encode
from datagen.arguments import INFO_NAME, check_seed

GENERATOR_VERSION = 1
CLASS_NAMES: dict[int, str] = {1: "pitting", 2: "crazing", 3: "scratches", 4: "patches"}
IMAGES_DIR = TRAIN_IMAGES_DIR
CSV_NAME = TRAIN_CSV_NAME
CSV_HEADER = TRAIN_CSV_HEADER
JPEG_QUALITY = 95
MIN_HEIGHT = 32
MIN_WIDTH = 64
FULL_HEIGHT = 256
FULL_WIDTH = 1600

# How likely each class is to be picked for a defective image. Severstal's train.csv has
# 5150 images with class 3, 897 with class 1, 801 with class 4 and 247 with class 2 (74%,
# 13%, 11%, 4%). Class 2 is raised to 7% here so that a few hundred generated images still
# hold enough crazing to learn from; it stays the rarest.
_CLASS_WEIGHTS = np.array([0.15, 0.07, 0.62, 0.16])
# How many classes a defective image holds: Severstal has about 6% with two or more; a few
# more here, so that multi-class images are not a rarity in small sets.
_CLASS_COUNT_WEIGHTS = np.array([0.84, 0.13, 0.03])
# Instances of one class in an image, drawn uniformly from [low, high).
_INSTANCES = {1: (1, 3), 2: (1, 2), 3: (1, 3), 4: (1, 3)}
# Image ids come from their own stream so that changing how an image is drawn keeps its name.
_ID_STREAM = 7_000_001
_ID_SPACE = 16**9
# A mask covers a thin line this many pixels on each side: the line's antialiased fringe is
# part of the defect, and a few pixels of slack make thin defects learnable at 1/4 resolution.
_LINE_MARGIN = 2


class SteelSample(NamedTuple):
    """One generated image: its Kaggle ``ImageId``, the RGB image and the class-index mask."""

    image_id: str
    image: Image.Image
    mask: np.ndarray


class _Mark(NamedTuple):
    """The pixels one defect covers: a boolean ``mask`` of the window ``rows, cols``."""

    rows: slice
    cols: slice
    mask: np.ndarray


# ---------------------------------------------------------------------------------------------
# Background: the steel surface without defects.
# ---------------------------------------------------------------------------------------------


def _stretched_noise(rng: np.random.Generator, height: int, width: int, rows: int, cols: int) -> np.ndarray:
    """Smooth unit-variance noise of ``(height, width)`` from a ``rows x cols`` grid.

    A grid with many more rows than columns gives streaks along x, like rolling marks.
    """
    grid = rng.standard_normal((max(rows, 2), max(cols, 2)), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC))


def _steel_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Grey rolled steel as float32: level, streaks, row lines, uneven lighting and noise."""
    level = rng.uniform(95.0, 150.0)
    streaks = _stretched_noise(rng, height, width, height // 2, width // 48) * rng.uniform(3.0, 7.0)
    bands = _stretched_noise(rng, height, width, height // 16, width // 300) * rng.uniform(3.0, 8.0)
    row_lines = rng.normal(0.0, rng.uniform(0.5, 2.5), (height, 1)).astype(np.float32)
    lighting = 1.0 + _stretched_noise(rng, height, width, 3, 6) * np.float32(rng.uniform(0.04, 0.12))
    # Light from one side of the strip: a gentle top-to-bottom gradient.
    lighting += np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None] * np.float32(rng.uniform(-0.08, 0.08))
    grey = (np.float32(level) + streaks + bands + row_lines) * lighting
    grey += rng.standard_normal((height, width), dtype=np.float32) * np.float32(rng.uniform(2.0, 5.0))
    return grey


def _add_distractors(rng: np.random.Generator, grey: np.ndarray, scale: float) -> None:
    """Adds faint stains and roll marks: not defects, and weaker than any defect."""
    height, width = grey.shape
    for _ in range(rng.poisson(0.6)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry = rng.uniform(20.0, 80.0) * scale
        rows, cols = _window(cy, cx, ry, ry * rng.uniform(1.0, 4.0), grey.shape)
        shade = _soft_ellipse(rows, cols, cy, cx, ry, ry * 2.0)
        grey[rows, cols] *= 1.0 - np.float32(rng.uniform(0.04, 0.1)) * shade
    for _ in range(rng.poisson(0.8)):
        y = int(rng.integers(0, height))
        x0 = int(rng.integers(0, width))
        x1 = min(width, x0 + int(rng.uniform(0.2, 1.0) * width))
        grey[y, x0:x1] += np.float32(rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 7.0))


def _soft_ellipse(rows: slice, cols: slice, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """1 at the centre of an ellipse falling smoothly to 0 at its rim, over a window."""
    yy = (np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] - cy) / ry
    xx = (np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] - cx) / rx
    return np.clip(1.0 - (yy * yy + xx * xx), 0.0, 1.0) ** 2


def _strip_edge(rng: np.random.Generator, height: int, width: int) -> np.ndarray | None:
    """Where the photo shows the dark space past the edge of the strip, or ``None``.

    Many Severstal images end in a black region at one side; it is darker than any defect
    and carries no label, so "dark" alone must not mean "patch".
    """
    if rng.random() >= 0.15:
        return None
    x_edge = rng.uniform(0.05, 0.3) * width
    slope = rng.uniform(-0.25, 0.25)
    edge = x_edge + slope * (np.arange(height, dtype=np.float32)[:, None] - height / 2)
    columns = np.arange(width, dtype=np.float32)[None, :]
    outside = columns < edge if rng.random() < 0.5 else columns >= width - edge
    return outside


def _free_columns(outside: np.ndarray | None, width: int) -> tuple[float, float]:
    """The x range where defect centres may go: the strip itself, away from its dark edge."""
    if outside is None:
        return 0.0, float(width)
    covered = np.flatnonzero(outside.any(axis=0))
    if covered[0] == 0:
        return float(covered[-1] + 1), float(width)
    return 0.0, float(covered[0])


# ---------------------------------------------------------------------------------------------
# Defects. Each draws into `grey` in place and returns the pixels it covers.
# ---------------------------------------------------------------------------------------------


def _window(cy: float, cx: float, ry: float, rx: float, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of the box ``cy +- ry, cx +- rx``, clipped to the image."""
    height, width = shape
    top, bottom = max(0, math.floor(cy - ry)), min(height, math.ceil(cy + ry) + 1)
    left, right = max(0, math.floor(cx - rx)), min(width, math.ceil(cx + rx) + 1)
    return slice(top, max(top, bottom)), slice(left, max(left, right))


def _draw_pitting(rng: np.random.Generator, grey: np.ndarray, scale: float, x_range: tuple[float, float]) -> _Mark:
    """A cluster of small soft dots, mostly dark pits, a few bright ones."""
    height, _ = grey.shape
    count = int(rng.integers(15, 60))
    spread_y = rng.uniform(5.0, 18.0) * scale
    spread_x = spread_y * rng.uniform(1.0, 3.0)  # Clusters stretch along the rolling direction.
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(*x_range)
    ys = cy + rng.normal(0.0, spread_y, count)
    xs = cx + rng.normal(0.0, spread_x, count)
    radii = np.maximum(rng.uniform(1.0, 3.2, count) * scale, 1.0)
    signs = np.where(rng.random(count) < 0.8, -1.0, 1.0)
    amplitudes = rng.uniform(30.0, 70.0, count) * signs
    reach = float(radii.max()) + _LINE_MARGIN + 2
    rows, cols = _window(cy, cx, np.abs(ys - cy).max() + reach, np.abs(xs - cx).max() + reach, grey.shape)
    patch = grey[rows, cols]
    mask = np.zeros(patch.shape, dtype=bool)
    for y, x, radius, amplitude in zip(ys - rows.start, xs - cols.start, radii, amplitudes):
        # A loop over dots (at most 60), each touching a few dozen pixels of its own window.
        dot_rows, dot_cols = _window(y, x, radius + _LINE_MARGIN, radius + _LINE_MARGIN, patch.shape)
        dy = np.arange(dot_rows.start, dot_rows.stop, dtype=np.float32)[:, None] - y
        dx = np.arange(dot_cols.start, dot_cols.stop, dtype=np.float32)[None, :] - x
        distance2 = dy * dy + dx * dx
        patch[dot_rows, dot_cols] += np.float32(amplitude) * np.exp(-distance2 / np.float32(0.9 * radius * radius))
        # Just past the visible rim: the dot's soft edge belongs to it.
        mask[dot_rows, dot_cols] |= distance2 <= (radius + 1.0) ** 2
    return _Mark(rows, cols, mask)


def _draw_crazing(rng: np.random.Generator, grey: np.ndarray, scale: float, x_range: tuple[float, float]) -> _Mark:
    """A region of fine dark cracks: short zig-zag polylines with sharp turns."""
    height, _ = grey.shape
    ry = min(rng.uniform(18.0, 55.0) * scale, height * 0.45)
    rx = ry * rng.uniform(1.5, 3.5)
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(*x_range)
    step = max(scale, 0.5)
    rows, cols = _window(cy, cx, ry + 14 * step, rx + 14 * step, grey.shape)
    canvas = Image.new("L", (cols.stop - cols.start, rows.stop - rows.start))
    draw = ImageDraw.Draw(canvas)
    # About one crack per 300 px^2 of the region at full size, so large regions stay dense.
    cracks = int(np.clip(math.pi * ry * rx / (300.0 * step * step) * rng.uniform(0.8, 1.3), 8, 70))
    for _ in range(cracks):
        # Start inside the ellipse; area-uniform, so the network has no dense core.
        angle, radius = rng.uniform(0.0, 2.0 * math.pi), math.sqrt(rng.random())
        x = cx + rx * radius * math.cos(angle) - cols.start
        y = cy + ry * radius * math.sin(angle) - rows.start
        heading = rng.uniform(0.0, 2.0 * math.pi)
        points = [(x, y)]
        for _ in range(int(rng.integers(3, 7))):
            heading += rng.normal(0.0, 0.8)
            length = rng.uniform(4.0, 11.0) * step
            x, y = x + length * math.cos(heading), y + length * math.sin(heading)
            points.append((x, y))
        draw.line(points, fill=255, width=1)
    lines = np.asarray(canvas, dtype=np.float32) / 255.0
    soft = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32) / 255.0
    grey[rows, cols] -= np.float32(rng.uniform(28.0, 48.0)) * np.maximum(lines * 0.8, soft * 1.6)
    return _Mark(rows, cols, _dilate(canvas))


def _draw_scratches(rng: np.random.Generator, grey: np.ndarray, scale: float, x_range: tuple[float, float]) -> _Mark:
    """One to three long, nearly horizontal lines, bright or dark, fading at their ends."""
    height, width = grey.shape
    span = x_range[1] - x_range[0]
    length = min(rng.uniform(0.12, 0.6) * width, span)
    x0 = rng.uniform(x_range[0], x_range[1] - length)
    y0 = rng.uniform(0.08, 0.92) * height
    slope = math.tan(math.radians(rng.normal(0.0, 1.2)))
    knots = np.linspace(0.0, length, 8)
    wander = np.cumsum(rng.normal(0.0, 0.8 * scale, knots.size))  # Slight waviness along the line.
    offsets = [0.0] + list(np.cumsum(rng.uniform(3.0, 9.0, int(rng.integers(0, 3))) * max(scale, 0.5)))
    ys_line = y0 + slope * knots + wander
    margin = max(offsets) + 4 + _LINE_MARGIN
    rows, cols = _window(
        (ys_line.min() + ys_line.max()) / 2,
        x0 + length / 2,
        (ys_line.max() - ys_line.min()) / 2 + margin,
        length / 2 + 2,
        grey.shape,
    )
    canvas = Image.new("L", (cols.stop - cols.start, rows.stop - rows.start))
    draw = ImageDraw.Draw(canvas)
    # Mostly 2 px: a 1 px line is nearly averaged away at the 1/4 resolution of segmentation heads.
    thickness = int(rng.choice([1, 2, 2, 3])) if scale >= 0.5 else 1
    for offset in offsets:
        points = list(zip((x0 + knots - cols.start).tolist(), (ys_line + offset - rows.start).tolist()))
        draw.line(points, fill=255, width=thickness)
    soft = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float32) / 255.0
    lines = np.maximum(np.asarray(canvas, dtype=np.float32) / 255.0 * 0.85, soft)
    # Real scratches fade in and out and vary in depth along their length.
    along = (np.arange(cols.start, cols.stop, dtype=np.float32) - x0) / max(length, 1.0)
    taper = np.clip(np.minimum(along, 1.0 - along) * 8.0, 0.45, 1.0)
    taper = taper * (0.8 + 0.2 * np.cos(along * rng.uniform(3.0, 12.0) + rng.uniform(0.0, 6.3)))
    sign = 1.0 if rng.random() < 0.55 else -1.0
    grey[rows, cols] += np.float32(sign * rng.uniform(28.0, 60.0)) * lines * taper[None, :].astype(np.float32)
    return _Mark(rows, cols, _dilate(canvas))


def _draw_patch(rng: np.random.Generator, grey: np.ndarray, scale: float, x_range: tuple[float, float]) -> _Mark:
    """A large irregular darker blob with soft edges and a mottled inside."""
    height, _ = grey.shape
    ry = min(rng.uniform(25.0, 110.0) * scale, height * 0.5)
    rx = ry * rng.uniform(1.2, 4.0)
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(*x_range)
    rows, cols = _window(cy, cx, ry * 1.4, rx * 1.4, grey.shape)
    window_h, window_w = rows.stop - rows.start, cols.stop - cols.start
    yy = (np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] - cy) / ry
    xx = (np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] - cx) / rx
    # An ellipse whose rim is pushed in and out by smooth noise: an irregular but whole blob.
    field = 1.0 - (yy * yy + xx * xx) + 0.45 * _stretched_noise(rng, window_h, window_w, 5, 7)
    blob = Image.fromarray(np.where(field > 0.0, 255, 0).astype(np.uint8))
    soft = np.asarray(blob.filter(ImageFilter.GaussianBlur(rng.uniform(2.0, 5.0) * max(scale, 0.4))), np.float32) / 255
    mottle = 1.0 + 0.15 * _stretched_noise(rng, window_h, window_w, max(window_h // 6, 2), max(window_w // 12, 2))
    depth = np.float32(rng.uniform(0.25, 0.5))
    grey[rows, cols] *= np.clip(1.0 - depth * soft * mottle, 0.2, 1.0)
    # Half-way down the soft edge: where the blob's own boundary was.
    return _Mark(rows, cols, soft >= 0.5)


def _dilate(canvas: Image.Image) -> np.ndarray:
    """The drawn pixels grown by ``_LINE_MARGIN`` on each side, as a boolean array."""
    return np.asarray(canvas.filter(ImageFilter.MaxFilter(2 * _LINE_MARGIN + 1))) > 0


_DRAWERS = {1: _draw_pitting, 2: _draw_crazing, 3: _draw_scratches, 4: _draw_patch}


# ---------------------------------------------------------------------------------------------
# Whole images and data sets.
# ---------------------------------------------------------------------------------------------


def _check_size(height: int, width: int) -> None:
    if height < MIN_HEIGHT or width < MIN_WIDTH:
        raise ValueError(
            f"height={height}, width={width} is too small to hold the defects; use at least "
            f"height={MIN_HEIGHT}, width={MIN_WIDTH} (Severstal images are {FULL_HEIGHT} x {FULL_WIDTH})"
        )


def pick_classes(rng: np.random.Generator) -> list[int]:
    """Defect classes for one defective image, with Severstal-like frequencies (class 3 most)."""
    count = 1 + int(rng.choice(len(_CLASS_COUNT_WEIGHTS), p=_CLASS_COUNT_WEIGHTS))
    chosen = rng.choice(len(_CLASS_WEIGHTS), size=count, replace=False, p=_CLASS_WEIGHTS)
    return [int(index) + 1 for index in chosen]


def draw_steel(
    rng: np.random.Generator,
    height: int = FULL_HEIGHT,
    width: int = FULL_WIDTH,
    *,
    classes: Sequence[int] | None = None,
) -> tuple[Image.Image, np.ndarray]:
    """Draws one steel-strip image and its class-index defect mask.

    Args:
        rng: The generator all randomness comes from.
        height: Image height in pixels, at least :data:`MIN_HEIGHT`.
        width: Image width in pixels, at least :data:`MIN_WIDTH`.
        classes: Defect classes to draw (1-4, in drawing order). ``None`` picks one to three
            with :func:`pick_classes`; an empty sequence draws a clean image.

    Returns:
        ``(image, mask)``: a grey RGB image and a ``uint8`` ``(height, width)`` mask, 0 for clean
        steel and the class for defect pixels. Where defects overlap, the one drawn later wins.
        A class can be missing from the mask if later defects cover it completely.

    Raises:
        ValueError: If the size is too small or a class is not 1-4.
    """
    _check_size(height, width)
    classes = pick_classes(rng) if classes is None else list(classes)
    unknown = [c for c in classes if c not in CLASS_NAMES]
    if unknown:
        raise ValueError(f"classes={classes} has {unknown[0]!r}; defect classes are {sorted(CLASS_NAMES)}")
    # Defects are sized for a 256 x 1600 image and shrink with it.
    scale = min(height / FULL_HEIGHT, width / FULL_WIDTH)
    grey = _steel_background(rng, height, width)
    _add_distractors(rng, grey, scale)
    outside = _strip_edge(rng, height, width)
    x_range = _free_columns(outside, width)
    mask = np.zeros((height, width), dtype=np.uint8)
    for class_id in classes:
        for _ in range(int(rng.integers(*_INSTANCES[class_id]))):
            mark = _DRAWERS[class_id](rng, grey, scale, x_range)
            mask[mark.rows, mark.cols][mark.mask] = class_id
    if outside is not None:
        # Past the strip's edge there is no steel, so no defect either.
        grey[outside] = 10.0 + 6.0 * rng.random(int(outside.sum()), dtype=np.float32)
        mask[outside] = 0
    pixels = np.clip(grey + 0.5, 0.0, 255.0).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB"), mask


def image_id(seed: int, index: int, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """The Kaggle-style ``ImageId`` of image ``index``: 9 hex characters + ``.jpg``, avoiding ``taken``."""
    rng = np.random.default_rng([seed, _ID_STREAM, index])
    while True:
        name = f"{int(rng.integers(0, _ID_SPACE)):09x}.jpg"
        if name not in taken:
            return name


def steel_sample(
    seed: int,
    index: int,
    height: int = FULL_HEIGHT,
    width: int = FULL_WIDTH,
    clean_fraction: float = 0.45,
    taken: set[str] | frozenset[str] = frozenset(),
) -> SteelSample:
    """Image ``index`` of the data set :func:`write_steel` writes with these arguments."""
    rng = np.random.default_rng([seed, index])
    clean = rng.random() < clean_fraction
    image, mask = draw_steel(rng, height, width, classes=() if clean else None)
    return SteelSample(image_id(seed, index, taken), image, mask)


def csv_rows(image_id: str, mask: np.ndarray) -> list[tuple[str, int, str]]:
    """``(ImageId, ClassId, EncodedPixels)`` for each class present in ``mask``; none if clean."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=len(CLASS_NAMES) + 1)[1:]) + 1
    return [(image_id, int(class_id), rle_encode(mask == class_id)) for class_id in present]


def write_steel(
    out: str | Path,
    n: int = 200,
    seed: int = 0,
    height: int = FULL_HEIGHT,
    width: int = FULL_WIDTH,
    clean_fraction: float = 0.45,
    *,
    overwrite: bool = False,
) -> dict:
    """Writes ``n`` steel images, ``train.csv`` and ``dataset_info.json`` to ``out``.

    Args:
        out: Output directory, created if needed.
        n: Number of images.
        seed: Non-negative seed; the same arguments write byte-identical files.
        height: Image height in pixels, at least :data:`MIN_HEIGHT`.
        width: Image width in pixels, at least :data:`MIN_WIDTH`.
        clean_fraction: Probability that an image has no defect.
        overwrite: Replace a data set already in ``out``. Its ``train_images/*.jpg``, CSV and
            info file are deleted first: a stale image left behind would load as clean.

    Returns:
        The contents of ``dataset_info.json``.

    Raises:
        ValueError: If an argument is out of range.
        FileExistsError: If ``out`` already holds a data set and ``overwrite`` is false.
    """
    _check_arguments(n, seed, clean_fraction)
    _check_size(height, width)
    out = Path(out)
    _clear_previous(out, overwrite)
    images_dir = out / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, int, str]] = []
    taken: set[str] = set()
    clean = 0
    for index in range(n):
        sample = steel_sample(seed, index, height, width, clean_fraction, taken)
        taken.add(sample.image_id)
        (images_dir / sample.image_id).write_bytes(_jpeg_bytes(sample.image))
        sample_rows = csv_rows(sample.image_id, sample.mask)
        clean += not sample_rows
        rows.extend(sample_rows)
    rows.sort()
    _write_csv(out / CSV_NAME, rows)
    info = _dataset_info(n, seed, height, width, clean_fraction, rows, clean)
    (out / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _check_arguments(n: int, seed: int, clean_fraction: float) -> None:
    if n < 1:
        raise ValueError(f"n={n} must be at least 1 image")
    check_seed(seed)
    if not 0.0 <= clean_fraction <= 1.0:
        raise ValueError(f"clean_fraction={clean_fraction} must be between 0 and 1")


def _clear_previous(out: Path, overwrite: bool) -> None:
    images_dir = out / IMAGES_DIR
    previous = [path for path in (out / CSV_NAME, out / INFO_NAME) if path.exists()]
    previous += sorted(images_dir.glob("*.jpg")) if images_dir.is_dir() else []
    if not previous:
        return
    if not overwrite:
        raise FileExistsError(
            f"'{out}' already holds a data set ({previous[0].name} and {len(previous) - 1} more files); pass "
            "overwrite=True (--overwrite) to replace it, or choose an empty directory"
        )
    for path in previous:
        path.unlink()


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _write_csv(path: Path, rows: list[tuple[str, int, str]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)


def _dataset_info(
    n: int, seed: int, height: int, width: int, clean_fraction: float, rows: list[tuple[str, int, str]], clean: int
) -> dict:
    per_class = {str(class_id): 0 for class_id in CLASS_NAMES}
    for _, class_id, _ in rows:
        per_class[str(class_id)] += 1
    return {
        "name": "steel",
        "generator": "datagen.steel",  # Not __name__, which is "__main__" under -m.
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n": n,
        "size": {"height": height, "width": width},
        "clean_fraction": clean_fraction,
        "class_names": {str(class_id): name for class_id, name in CLASS_NAMES.items()},
        "images_per_class": per_class,
        "clean_images": clean,
        "defect_images": n - clean,
        # The same counts in the shape the other generators' info files use (classes, and
        # images per split and class), which train.datasets prints as its summary table.
        "classes": list(CLASS_NAMES.values()),
        "counts": {"train": {CLASS_NAMES[int(key)]: count for key, count in per_class.items()}},
        "layout": {"images": f"{IMAGES_DIR}/<ImageId>", "csv": CSV_NAME, "csv_header": list(CSV_HEADER)},
    }


class SteelImage(NamedTuple):
    """One image of a written set, read back: its ImageId, file and class-index mask (0 clean)."""

    image_id: str
    path: Path
    mask: np.ndarray

    @property
    def defective(self) -> bool:
        return bool(self.mask.any())


def read_steel(folder: str | Path) -> list[SteelImage]:
    """The images of a set :func:`write_steel` wrote, in ImageId order, with masks decoded from its CSV.

    This reads only this generator's own layout, for benchmarks and tests; training reads any
    Kaggle-layout folder through ``train.segmentation.data``.

    Raises:
        FileNotFoundError: ``folder`` holds no set written by :func:`write_steel`.
    """
    folder = Path(folder)
    if not (folder / CSV_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CSV_NAME}; write the set with write_steel (or train.datasets steel)")
    with (folder / CSV_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = []
    for path in sorted((folder / IMAGES_DIR).glob("*.jpg")):
        with Image.open(path) as image:
            shape = (image.height, image.width)
        mask = np.zeros(shape, dtype=np.uint8)
        for row in rows:
            if row["ImageId"] == path.name:
                mask[rle_decode(row["EncodedPixels"], shape)] = int(row["ClassId"])
        images.append(SteelImage(path.name, path, mask))
    return images


def held_out_steel(root: str | Path, n: int, seed: int) -> list[SteelImage]:
    """``n`` strips drawn with ``seed`` under ``root`` (written on first use, then reused), read back."""
    folder = Path(root) / f"steel-heldout-seed{seed}-n{n}"
    if not (folder / CSV_NAME).is_file():
        write_steel(folder, n=n, seed=seed)
    return read_steel(folder)
