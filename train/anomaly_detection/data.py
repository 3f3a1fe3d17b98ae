"""Where the good (and validation) images of each product are, checked before any feature is computed.

``--train_dir`` takes three layouts:

- a folder of good images (one product, named after the folder);
- an MVTec AD product folder: ``DIR/train/good/*.png`` (one product, named after ``DIR``);
- a folder with one sub-folder per product, each of the two above: one memory bank each.

``--validation_defect_dir`` takes, per product, MVTec AD's test folder: ``<defect_type>/*.png``
sub-folders of defective images, an optional ``good/`` of good ones, and the masks, when there
are any, at ``../ground_truth/<defect_type>/<name>_mask.png``. Give that folder itself, the
product folder that holds it as ``validation/`` (preferred: the generated sets have one) or
``test/``, or (several products) the folder of product folders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from common.anomaly_files import check_product_name
from common.image_io import ImageLoadError, load_image
from train.data import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Two folds of at least two images, plus one: fewer would give a threshold from noise.
MIN_GOOD_IMAGES = 5
# MVTec AD's folder names.
TRAIN_DIR, VALIDATION_DIR, TEST_DIR, GOOD_DIR = "train", "validation", "test", "good"
GROUND_TRUTH_DIR, MASK_SUFFIX = "ground_truth", "_mask"


@dataclass
class ValidationSet:
    """One product's validation images: good ones, and defective ones with their masks (None: no mask)."""

    good: list[Path] = field(default_factory=list)
    defective: list[Path] = field(default_factory=list)
    defect_types: list[str] = field(default_factory=list)
    masks: list[Path | None] = field(default_factory=list)


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted (hidden files left out)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _sub_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _good_images(folder: Path, flag: str) -> list[Path]:
    """A product's good images: ``folder/train/good`` (MVTec) or the images directly in ``folder``."""
    mvtec = folder / TRAIN_DIR / GOOD_DIR
    if mvtec.is_dir():
        return image_files(mvtec)
    loose = image_files(folder)
    folders = _sub_folders(folder)
    if loose and folders:
        raise DataError(
            f"{flag} {folder} holds both images and sub-folders ({', '.join(p.name for p in folders[:3])}), "
            "so it is neither a folder of good images nor a folder of products. Move the images into a "
            "sub-folder (a product) or the sub-folders out."
        )
    return loose


def find_products(train_dir: str | Path) -> dict[str, list[Path]]:
    """Product name -> its good images, for the three layouts of the module docstring.

    Raises:
        DataError: a missing or empty folder, a mixed layout, a bad product name, or a product with
            fewer than :data:`MIN_GOOD_IMAGES` images.
    """
    flag = "--train_dir"
    root = Path(train_dir)
    if not root.is_dir():
        raise DataError(f"{flag} {root} is not a folder; give the folder of good images (or of product folders)")
    if (root / TRAIN_DIR / GOOD_DIR).is_dir() or image_files(root):
        products = {root.resolve().name: _good_images(root, flag)}
    else:
        folders = _sub_folders(root)
        if not folders:
            raise DataError(
                f"{flag} {root} is empty: it has no images and no product sub-folders. Put the good images there "
                f"(or in {root}/<product>/ or {root}/{TRAIN_DIR}/{GOOD_DIR}/)"
            )
        products = {folder.name: _good_images(folder, flag) for folder in folders}
    for name, files in products.items():
        try:
            check_product_name(name)
        except ValueError as error:
            raise DataError(f"{flag}: {error}") from error
        if len(files) < MIN_GOOD_IMAGES:
            where = root if len(products) == 1 else root / name
            raise DataError(
                f"{flag}: product {name!r} ({where}) has {len(files)} good image(s); at least {MIN_GOOD_IMAGES} are "
                "needed (each is scored by a memory bank built from the others, to fit the threshold). Add good images"
                + (
                    ", or check that the folder is the product's (train/good/ or the images themselves)"
                    if not files
                    else ""
                )
            )
    return products


def load_checked_images(files: list[Path], product: str) -> list[Image.Image]:
    """Load every image of a product; all must decode and have the same size.

    Patches are compared at the same place of the same-size image, so a product's images of
    different sizes mean different views or cameras (several products in one folder).

    Raises:
        DataError: naming the unreadable file, or two files of different sizes.
    """
    images = []
    for path in files:
        try:
            images.append(load_image(path))
        except ImageLoadError as error:
            raise DataError(f"product {product!r}: {error}. Remove or replace the file.") from error
        if images[-1].size != images[0].size:
            (w0, h0), (w, h) = images[0].size, images[-1].size
            raise DataError(
                f"product {product!r} mixes image sizes: {files[0].name} is {w0}x{h0} but {path.name} is {w}x{h}. "
                "One product must come from one camera setup: resize them to one size, or put each size in its own "
                "product sub-folder."
            )
    return images


def check_folds(folds: int) -> None:
    """Refuse fewer than 2 folds: each image must be scored by a bank built without it.

    Raises:
        DataError: naming the flag and the default.
    """
    if folds < 2:
        raise DataError(
            f"--folds {folds} must be at least 2 (each fold is scored by the others' banks); 5 is the default"
        )


def split_folds(count: int, folds: int, seed: int) -> list[np.ndarray]:
    """A seeded split of ``count`` image indices into ``min(folds, count)`` groups of near-equal size.

    Raises:
        DataError: fewer than 2 folds (see :func:`check_folds`).
    """
    check_folds(folds)
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(group) for group in np.array_split(order, min(folds, count))]


def _mask_for(image: Path, test_dir: Path) -> Path | None:
    mask = test_dir.parent / GROUND_TRUTH_DIR / image.parent.name / f"{image.stem}{MASK_SUFFIX}.png"
    return mask if mask.is_file() else None


def _read_test_folder(test_dir: Path) -> ValidationSet:
    found = ValidationSet()
    for folder in _sub_folders(test_dir):
        files = image_files(folder)
        if folder.name == GOOD_DIR:
            found.good.extend(files)
            continue
        for path in files:
            found.defective.append(path)
            found.defect_types.append(folder.name)
            found.masks.append(_mask_for(path, test_dir))
    return found


def find_validation_sets(validation_dir: str | Path, products: list[str]) -> dict[str, ValidationSet]:
    """Product -> validation images, for the layouts of the module docstring.

    Raises:
        DataError: a missing folder, or one with no defective image for a product.
    """
    flag = "--validation_defect_dir"
    root = Path(validation_dir)
    if not root.is_dir():
        raise DataError(f"{flag} {root} is not a folder; give MVTec's test folder (<defect_type>/*.png)")

    def test_folder(folder: Path) -> Path:
        # A product folder: its validation split when it has one (the generated sets do), so the
        # test split stays unseen; MVTec AD itself has only test/.
        for name in (VALIDATION_DIR, TEST_DIR):
            if (folder / name).is_dir():
                return folder / name
        return folder

    if len(products) == 1 and not (root / products[0]).is_dir():
        sets = {products[0]: _read_test_folder(test_folder(root))}
    else:
        missing = [name for name in products if not (root / name).is_dir()]
        if missing:
            raise DataError(
                f"{flag} {root} has no folder for product(s) {missing}; with several products it must hold one "
                "folder per product, named as in --train_dir"
            )
        sets = {name: _read_test_folder(test_folder(root / name)) for name in products}
    for name, found in sets.items():
        if not found.defective:
            raise DataError(
                f"{flag} {root}: no defective images for product {name!r}. Put them in <defect_type>/ sub-folders "
                "(MVTec AD's test/ layout, good images in good/)"
            )
    return sets
