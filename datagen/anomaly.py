"""Good and defective images with exact defect masks, in MVTec AD's layout, for anomaly detection.

Two sets, drawn from a seed like the others:

- ``anomaly-steel`` (:func:`write_anomaly_steel`): clean steel strips (:func:`datagen.steel.draw_steel`
  with no defect, but with its harmless stains and roll marks) vs strips with one defect type each
  (pitting, crazing, scratches, patches), one product;
- ``anomaly-parts`` (:func:`write_anomaly_parts`): one product per part kind (gear, hex nut,
  washer; :func:`datagen.parts.draw_part`'s parts in random poses and metals, laid on their
  product's plain table, :func:`draw_good_part`) vs the same parts with drawn defects: cracks,
  dents, stains and, on gears, missing teeth.

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
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from datagen.arguments import INFO_NAME, check_seed
from datagen.parts import draw_part
from datagen.steel import CLASS_NAMES, MIN_HEIGHT, MIN_WIDTH, draw_steel

GENERATOR_VERSION = 1
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


def _check_counts(n: int, n_per_class: int) -> None:
    if n < 5:
        raise ValueError(f"n={n} good training images is too few to fit a threshold; use n >= 5")
    if n_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class} must be at least 1 (defective images per type and split)")


def _write_product(
    root: Path,
    seed: int,
    product_index: int,
    n: int,
    n_per_class: int,
    defects: tuple[str, ...],
    draw_good: Callable[[np.random.Generator], Image.Image],
    draw_defect: Callable[[str, np.random.Generator], tuple[Image.Image, np.ndarray]],
) -> dict:
    """One product's folders; returns its image counts per split and type."""
    n_validation_defects = max(1, n_per_class // 2)
    plan = {
        TRAIN: {GOOD: n},
        VALIDATION: {GOOD: n_per_class, **dict.fromkeys(defects, n_validation_defects)},
        TEST: {GOOD: n_per_class, **dict.fromkeys(defects, n_per_class)},
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
) -> dict:
    """Write clean steel strips for training and clean + defective ones (with masks) for validation and test.

    Args:
        out: Output directory, created if needed.
        seed: Non-negative seed; the same arguments write byte-identical files.
        n: Good training images.
        n_per_class: Good test images and defective test images per defect type; validation gets
            as many good ones and half as many (at least one) of each defect type.
        height, width: Image size (Severstal's is 256 x 1600; defects are drawn to scale).

    Returns:
        The contents of ``dataset_info.json``.

    Raises:
        ValueError: an argument out of range; nothing is written then.
    """
    check_seed(seed)
    _check_counts(n, n_per_class)
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

    plan = _write_product(Path(out), seed, 0, n, n_per_class, STEEL_DEFECTS, good, defective)
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


def draw_good_part(product: str, rng: np.random.Generator, size: int = 128) -> tuple[Image.Image, np.ndarray]:
    """A part of kind ``product`` on its product's plain inspection table: ``(image, boolean part mask)``.

    :func:`datagen.parts.draw_part` puts parts on random textured, cluttered backgrounds (a
    classifier must learn to ignore them); an inspection station shows one product on one
    background, and clutter would look like the very defects to find. So the part, with its
    own pose, metal and shading, is cut out along its mask and laid on a plain table with a
    little lighting gradient and sensor noise.
    """
    image, part_image = draw_part(product, rng, size)
    part = np.asarray(part_image) > 127
    # A slightly soft edge, like a lens gives, instead of the mask's hard steps.
    alpha = np.asarray(part_image.filter(ImageFilter.GaussianBlur(0.6)), np.float32)[..., None] / 255.0
    table = np.array(_TABLE_COLOURS[product], np.float32)
    yy = np.linspace(-1.0, 1.0, size, dtype=np.float32)[:, None, None]
    background = table * (1.0 + rng.uniform(-0.06, 0.06) * yy) + rng.normal(0.0, 2.0, (size, size, 3))
    pixels = np.asarray(image, np.float32) * alpha + background * (1.0 - alpha)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB"), part


def draw_defective_part(product: str, defect: str, rng: np.random.Generator, size: int = 128):
    """:func:`draw_good_part` with one ``defect`` drawn on it: ``(image, boolean defect mask)``."""
    image, part = draw_good_part(product, rng, size)
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
    out: str | Path, seed: int = 0, n: int = 200, n_per_class: int = 10, size: int = 128, *, overwrite: bool = False
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

    Returns:
        The contents of ``dataset_info.json``.

    Raises:
        ValueError: an argument out of range; nothing is written then.
    """
    check_seed(seed)
    _check_counts(n, n_per_class)
    if size < 64:
        raise ValueError(f"size={size} is too small to draw defects on a part; use size >= 64")
    if overwrite:
        _clear_products(Path(out))
    plans = {}
    for index, product in enumerate(PART_PRODUCTS):

        def good(rng, product=product):
            return draw_good_part(product, rng, size)[0]

        def defective(kind, rng, product=product):
            return draw_defective_part(product, kind, rng, size)

        root = Path(out) / product
        plans[product] = _write_product(root, seed, index + 1, n, n_per_class, part_defects(product), good, defective)
    info = _info("anomaly-parts", seed, plans, size=size)
    (Path(out) / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return info
