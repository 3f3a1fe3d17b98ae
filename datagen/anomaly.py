"""Good and defective images with exact defect masks, in MVTec AD's layout, for anomaly detection.

Two sets, drawn from a seed like the others:

- ``anomaly-steel`` (:func:`write_anomaly_steel`): clean steel strips (:func:`datagen.steel.draw_steel`
  with no defect, but with its harmless stains and roll marks) vs strips with one defect type each
  (pitting, crazing, scratches, patches), one product;
- ``anomaly-parts`` (:func:`write_anomaly_parts`): one product per part kind (gear, hex nut,
  washer), each one design (:func:`part_design`: :mod:`datagen.parts`' shapes, one metal) held
  at one place and size on its product's plain table and turned at random
  (:func:`draw_good_part`), vs the same parts with drawn defects: cracks, dents, stains and,
  on gears, missing teeth.

The layout is MVTec AD's (which anomalib also reads), plus a validation split::

    DIR/[<product>/]train/good/000.png
    DIR/[<product>/]validation/good/val_000.png      validation/<defect_type>/val_000.png
    DIR/[<product>/]test/good/000.png                test/<defect_type>/000.png
    DIR/[<product>/]ground_truth/<defect_type>/000_mask.png   (and val_000_mask.png): 0/255

Train an anomaly detector with ``--train_dir DIR --validation_defect_dir DIR`` (it reads the
validation folders) and measure it on ``test/``. Image ``i`` of each folder comes from its own
generator seeded with ``(seed, stream, i)``, so a seed gives byte-identical files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from datagen.arguments import INFO_NAME, check_seed
from datagen.parts import _METALS, _PART_SHAPES, _SUPERSAMPLE, _downsample, _Pose, _rasterise, _shade_object
from datagen.steel import CLASS_NAMES, MIN_HEIGHT, MIN_WIDTH, draw_steel

GENERATOR_VERSION = 2
TRAIN, VALIDATION, TEST, GOOD, GROUND_TRUTH = "train", "validation", "test", "good", "ground_truth"
STEEL_DEFECTS: tuple[str, ...] = tuple(CLASS_NAMES[c] for c in sorted(CLASS_NAMES))
PART_PRODUCTS: tuple[str, ...] = ("gear", "hex_nut", "washer")
PART_DEFECTS: tuple[str, ...] = ("crack", "dent", "stain", "missing_tooth")
# Half the Severstal resolution by default: defects stay visible, and a strip is still a strip.
STEEL_HEIGHT, STEEL_WIDTH = 128, 800
_VALIDATION_PREFIX = "val_"
# Generator streams, so adding images to one folder never changes another's.
_STREAMS = {TRAIN: 11, VALIDATION: 12, TEST: 13}


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", compress_level=1)


def _mask_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")


def _check_counts(n: int, n_per_class: int, n_good_test: int | None) -> None:
    if n < 5:
        raise ValueError(f"n={n} good training images is too few to fit a threshold; use n >= 5")
    if n_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class} must be at least 1 (defective images per type and split)")
    if n_good_test is not None and n_good_test < 1:
        raise ValueError(f"n_good_test={n_good_test} must be at least 1, or None for n_per_class")


def _write_product(
    root: Path,
    seed: int,
    product_index: int,
    n: int,
    n_per_class: int,
    n_good_test: int,
    defects: tuple[str, ...],
    draw_good: Callable[[np.random.Generator], Image.Image],
    draw_defect: Callable[[str, np.random.Generator], tuple[Image.Image, np.ndarray]],
) -> dict:
    """One product's folders; returns its image counts per split and type."""
    n_validation_defects = max(1, n_per_class // 2)
    plan = {
        TRAIN: {GOOD: n},
        VALIDATION: {GOOD: n_per_class, **dict.fromkeys(defects, n_validation_defects)},
        TEST: {GOOD: n_good_test, **dict.fromkeys(defects, n_per_class)},
    }
    for split, kinds in plan.items():
        prefix = _VALIDATION_PREFIX if split == VALIDATION else ""
        for kind_index, (kind, count) in enumerate(kinds.items()):
            for index in range(count):
                rng = np.random.default_rng([seed, product_index, _STREAMS[split], kind_index, index])
                name = f"{prefix}{index:03d}"
                if kind == GOOD:
                    _save(draw_good(rng), root / split / GOOD / f"{name}.png")
                    continue
                image, mask = draw_defect(kind, rng)
                _save(image, root / split / kind / f"{name}.png")
                _save(_mask_image(mask), root / GROUND_TRUTH / kind / f"{name}_mask.png")
    return plan


def _info(name: str, seed: int, products: dict[str, dict], **sizes) -> dict:
    """The summary: images per split and class (good or a defect type) summed over products, and per product."""
    classes = [GOOD, *sorted({k for p in products.values() for s in p.values() for k in s} - {GOOD})]
    counts = {
        split: {kind: sum(p[split].get(kind, 0) for p in products.values()) for kind in classes}
        for split in (TRAIN, VALIDATION, TEST)
    }
    return {
        "name": name,
        "generator": __name__,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        **sizes,
        "layout": "MVTec AD: [<product>/]{train,validation,test}/<good|defect>/, ground_truth/<defect>/<name>_mask.png",
        "classes": classes,
        "counts": counts,
        "products": products,
    }


def write_anomaly_steel(
    out: str | Path,
    seed: int = 0,
    n: int = 200,
    n_per_class: int = 10,
    height: int = STEEL_HEIGHT,
    width: int = STEEL_WIDTH,
    n_good_test: int | None = None,
) -> dict:
    """Write clean steel strips for training and clean + defective ones (with masks) for validation and test.

    Args:
        out: Output directory, created if needed.
        seed: Non-negative seed; the same arguments write byte-identical files.
        n: Good training images.
        n_per_class: Good test images and defective test images per defect type; validation gets
            as many good ones and half as many (at least one) of each defect type.
        height, width: Image size (Severstal's is 256 x 1600; defects are drawn to scale).
        n_good_test: Good test images, when more are wanted than ``n_per_class`` (a false-reject
            rate of 1% needs hundreds to be measured).

    Returns:
        The contents of ``dataset_info.json``.

    Raises:
        ValueError: an argument out of range; nothing is written then.
    """
    check_seed(seed)
    _check_counts(n, n_per_class, n_good_test)
    if height < MIN_HEIGHT or width < MIN_WIDTH:
        raise ValueError(f"height={height}, width={width} is too small; use at least {MIN_HEIGHT} x {MIN_WIDTH}")
    by_name = {name: class_id for class_id, name in CLASS_NAMES.items()}

    def good(rng):
        return draw_steel(rng, height, width, classes=())[0]

    def defective(kind, rng):
        while True:  # a defect can fall past the strip's edge and vanish: draw again until it shows
            image, mask = draw_steel(rng, height, width, classes=[by_name[kind]])
            if mask.any():
                return image, mask > 0

    n_good_test = n_per_class if n_good_test is None else n_good_test
    plan = _write_product(Path(out), seed, 0, n, n_per_class, n_good_test, STEEL_DEFECTS, good, defective)
    info = _info("anomaly-steel", seed, {"steel": plan}, height=height, width=width)
    (Path(out) / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return info


# ---------------------------------------------------------------------------------------------
# Defects drawn on a part: each returns the new image and the defect's mask (inside the part,
# except a missing tooth, which is part pixels that are gone).
# ---------------------------------------------------------------------------------------------


def _inside_point(mask: np.ndarray, rng: np.random.Generator, margin: int = 0) -> tuple[int, int]:
    """A random (y, x) of the part, away from its edge by ``margin`` pixels when possible."""
    inner = mask
    if margin:
        eroded = np.asarray(_mask_image(mask).filter(ImageFilter.MinFilter(2 * margin + 1))) > 0
        inner = eroded if eroded.any() else mask
    ys, xs = np.nonzero(inner)
    pick = int(rng.integers(len(ys)))
    return int(ys[pick]), int(xs[pick])


def _crack(pixels: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = part.shape[0]
    y, x = _inside_point(part, rng, margin=2)
    angle = rng.uniform(0, 2 * np.pi)
    points = [(x, y)]
    for _ in range(int(rng.integers(4, 8))):
        angle += rng.normal(0, 0.5)
        step = rng.uniform(0.03, 0.06) * size
        x, y = x + step * np.cos(angle), y + step * np.sin(angle)
        points.append((x, y))
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).line(points, fill=255, width=max(1, round(size / 96)))
    drawn = (np.asarray(canvas) > 0) & part
    pixels[drawn] *= rng.uniform(0.15, 0.35)
    return drawn


def _soft_disc(size: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    distance = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    return np.clip(1.0 - distance, 0.0, 1.0)


def _dent(pixels: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = part.shape[0]
    y, x = _inside_point(part, rng, margin=3)
    radius = rng.uniform(0.04, 0.07) * size
    weight = _soft_disc(size, y, x, radius, radius * rng.uniform(0.7, 1.3)) * part
    # A dent catches the light on one side and is in shadow on the other.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    side = np.clip(2.0 * ((xx - x) * np.cos(angle) + (yy - y) * np.sin(angle)) / radius, -1, 1)
    pixels += (weight * side * rng.uniform(70, 100))[..., None]
    return weight > 0.05


def _stain(pixels: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = part.shape[0]
    y, x = _inside_point(part, rng, margin=2)
    radius = rng.uniform(0.04, 0.08) * size
    weight = _soft_disc(size, y, x, radius, radius * rng.uniform(0.6, 1.6)) ** 0.5 * part
    colour = np.array(rng.choice([[95, 60, 25], [30, 30, 35], [140, 110, 40]]), np.float32)
    alpha = rng.uniform(0.6, 0.85) * weight
    pixels[:] = pixels * (1 - alpha[..., None]) + colour * alpha[..., None]
    return weight > 0.2


def _missing_tooth(pixels: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut a notch out of the part's rim (a gear's tooth) and show the background through it."""
    size = part.shape[0]
    ys, xs = np.nonzero(part)
    cy, cx = ys.mean(), xs.mean()
    radii = np.hypot(ys - cy, xs - cx)
    outer = np.flatnonzero(radii >= np.quantile(radii, 0.97))
    pick = int(rng.choice(outer))
    y, x = ys[pick], xs[pick]
    radius = rng.uniform(0.06, 0.09) * size
    notch = (_soft_disc(size, y, x, radius, radius) > 0) & part
    around = (_soft_disc(size, y, x, 2.5 * radius, 2.5 * radius) > 0) & ~part
    background = np.median(pixels[around], axis=0) if around.any() else np.median(pixels[~part], axis=0)
    noise = rng.normal(0, 4, (int(notch.sum()), 3)).astype(np.float32)
    pixels[notch] = background + noise
    return notch


_PART_DRAWERS = {"crack": _crack, "dent": _dent, "stain": _stain, "missing_tooth": _missing_tooth}


def part_defects(product: str) -> tuple[str, ...]:
    """The defect types drawn on ``product`` (missing teeth only on gears)."""
    return PART_DEFECTS if product == "gear" else tuple(d for d in PART_DEFECTS if d != "missing_tooth")


# The inspection table every part of a product lies on: one colour per product, as on a line.
_TABLE_COLOURS = {"gear": (62, 96, 120), "hex_nut": (48, 112, 80), "washer": (120, 72, 60)}
# A station's fixture holds every part of a product at one place and size (as MVTec AD's objects
# are): the part's largest side fills this share of the image, give or take the jitters (shares
# of the image side, and of the size). Only the rotation is free, as on MVTec's metal nuts.
_PART_FILL = 0.8
_POSITION_JITTER = 0.02
_SCALE_JITTER = 0.02
# Generator stream of a product's design, apart from the images' own streams.
_DESIGN_STREAM = 21


@dataclass(frozen=True)
class PartDesign:
    """What every part of one product shares: its shape (teeth, bore, holes), metal and station light."""

    product: str
    ops: tuple
    colour: np.ndarray
    light_seed: int


def part_design(product: str, seed: int = 0) -> PartDesign:
    """The one design of ``product`` that the set of ``seed`` makes (another seed, another design).

    Raises:
        ValueError: ``product`` is not one of :data:`PART_PRODUCTS`.
    """
    if product not in PART_PRODUCTS:
        raise ValueError(f"product={product!r} is not an anomaly-parts product; use one of {', '.join(PART_PRODUCTS)}")
    rng = np.random.default_rng([seed, PART_PRODUCTS.index(product) + 1, _DESIGN_STREAM])
    ops = tuple(_PART_SHAPES[product](rng))
    colour = _METALS[rng.integers(len(_METALS))]  # bare metal: a product is not painted one part in five
    return PartDesign(product, ops, colour, int(rng.integers(2**31)))


def _fixture_pose(design: PartDesign, rng: np.random.Generator, canvas: int) -> _Pose:
    """Any rotation; position and size as the fixture holds them, within the jitters."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    solid = np.vstack([op.points for op in design.ops if op.kind in ("fill", "stroke")])
    extent = 2.0 * float(np.hypot(solid[:, 0], solid[:, 1]).max())  # the part's diameter, whatever its rotation
    scale = _PART_FILL * canvas / extent * (1.0 + rng.uniform(-_SCALE_JITTER, _SCALE_JITTER))
    offset = canvas / 2 + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER, 2) * canvas
    return _Pose(matrix, scale, offset)


def draw_good_part(
    product: str, rng: np.random.Generator, size: int = 128, *, design: PartDesign | None = None
) -> tuple[Image.Image, np.ndarray]:
    """A part of kind ``product`` at its inspection station: ``(image, boolean part mask)``.

    :func:`datagen.parts.draw_part` draws a new design (tooth count, bore, holes, even paint) in a
    random size, place, tilt and background for every image, which a classifier must learn to
    see through. An inspection station sees one product: the same design and metal, held by a
    fixture at one place and size under one light, on a plain table with a little lighting
    gradient and sensor noise. Only the rotation is free (these parts are round or hexagonal
    and are fed in any orientation). A detector trained on good images can only call a part
    novel if good parts are alike; with a new design in every image, every image is novel.

    Args:
        design: The product's design; :func:`part_design` of ``product`` with seed 0 without one.
    """
    design = design or part_design(product)
    canvas = size * _SUPERSAMPLE
    silhouette, shading = _rasterise(design.ops, _fixture_pose(design, rng, canvas), canvas)
    coverage = np.asarray(silhouette.reduce(_SUPERSAMPLE), np.float32)
    colour = np.clip(design.colour * rng.uniform(0.97, 1.03) + rng.normal(0.0, 2.0, 3), 0, 255).astype(np.float32)
    # The station's light stays where it is while the part turns under it.
    part_pixels = _shade_object(coverage, _downsample(shading), colour, np.random.default_rng(design.light_seed))
    table = np.array(_TABLE_COLOURS[product], np.float32)
    yy = np.linspace(-1.0, 1.0, size, dtype=np.float32)[:, None, None]
    background = table * (1.0 + rng.uniform(-0.04, 0.04) * yy) + rng.normal(0.0, 2.0, (size, size, 3))
    alpha = coverage[..., None] / 255.0
    pixels = background * (1.0 - alpha) + part_pixels + rng.normal(0.0, 1.5, (size, size, 3)) * alpha
    image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    return image, coverage >= 128


def draw_defective_part(
    product: str, defect: str, rng: np.random.Generator, size: int = 128, *, design: PartDesign | None = None
) -> tuple[Image.Image, np.ndarray]:
    """:func:`draw_good_part` with one ``defect`` drawn on it: ``(image, boolean defect mask)``."""
    image, part = draw_good_part(product, rng, size, design=design)
    pixels = np.asarray(image, np.float32).copy()
    mask = _PART_DRAWERS[defect](pixels, part, rng)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB"), mask


def _clear_products(out: Path) -> None:
    """Delete the PNGs an earlier run wrote under ``out/<product>/`` (a smaller run must not leave stale ones)."""
    for product in PART_PRODUCTS:
        folder = out / product
        if not folder.is_dir():
            continue
        for path in folder.rglob("*.png"):
            path.unlink()
        for directory in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(directory.iterdir()):
                directory.rmdir()


def write_anomaly_parts(
    out: str | Path,
    seed: int = 0,
    n: int = 200,
    n_per_class: int = 10,
    size: int = 128,
    *,
    overwrite: bool = False,
    n_good_test: int | None = None,
) -> dict:
    """Write one MVTec product folder per part kind (:data:`PART_PRODUCTS`): good parts, and defective ones with masks.

    Args:
        out: Output directory, created if needed; it holds one folder per product.
        seed: Non-negative seed; the same arguments write byte-identical files.
        n: Good training images per product.
        n_per_class: Good test images and defective test images per defect type, per product;
            validation gets as many good ones and half as many (at least one) of each defect type.
        size: Image width and height.
        overwrite: Delete the product folders' PNGs of an earlier run first.
        n_good_test: Good test images per product, when more are wanted than ``n_per_class``.

    Returns:
        The contents of ``dataset_info.json``.

    Raises:
        ValueError: an argument out of range; nothing is written then.
    """
    check_seed(seed)
    _check_counts(n, n_per_class, n_good_test)
    if size < 64:
        raise ValueError(f"size={size} is too small to draw defects on a part; use size >= 64")
    n_good_test = n_per_class if n_good_test is None else n_good_test
    if overwrite:
        _clear_products(Path(out))
    plans = {}
    for index, product in enumerate(PART_PRODUCTS):
        design = part_design(product, seed)

        def good(rng, product=product, design=design):
            return draw_good_part(product, rng, size, design=design)[0]

        def defective(kind, rng, product=product, design=design):
            return draw_defective_part(product, kind, rng, size, design=design)

        root = Path(out) / product
        plans[product] = _write_product(
            root, seed, index + 1, n, n_per_class, n_good_test, part_defects(product), good, defective
        )
    info = _info("anomaly-parts", seed, plans, size=size)
    (Path(out) / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return info
