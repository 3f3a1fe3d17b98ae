"""Defect-segmentation data from the Kaggle Severstal layout, mask folders or the Hub, checked once.

Three sources give one shape of data:

* **Kaggle** (:func:`load_kaggle`): ``train.csv`` and ``train_images/``. The newer CSV has
  ``ImageId,ClassId,EncodedPixels`` with one row per (image, defect class present); images in
  the folder without a row are clean. The older CSV has ``ImageId_ClassId,EncodedPixels``
  (``0002cc93b.jpg_1``) with a row for every (image, class), empty when the class is absent.
  Masks are run-length encoded (:mod:`common.rle`).
* **Mask folders** (:func:`load_mask_folders`): ``images/<name>.jpg|png`` and
  ``masks/<name>.png``, a single-channel (L or P) PNG whose values are class indices.
* **Hub datasets** (:func:`load_hub_segmentation`): an image column and a class-index mask
  image column; also a folder written by ``Dataset.save_to_disk``.

Each row is one image and masks stay lazy: Kaggle rows hold ``rles`` (one string per defect
class, ``""`` when absent) and the other sources a ``mask`` file or undecoded image cell.
:func:`decode_mask` turns either into a class-index ``uint8`` array. Every row also carries
``image_id``, ``height``, ``width`` and ``defects`` (multi-hot of the defect classes, for the
stage-1 "which defects are present" classifier and for stratified splits).

Loading reads image and mask *headers* for sizes and decodes nothing but the RLE numbers and
the (small) mask PNGs, so that bad data is refused before training starts:

* an unknown class id, a malformed RLE, a duplicated (image, class) row, or a mask whose size
  differs from its image's is a :class:`DataError` naming the row or file;
* a missing or unreadable image is skipped and listed in ``SegmentationData.skipped``, unless
  more than 5% are, which means a wrong folder rather than a few bad files: then it is an error.

Images without defects are kept: they are most of the data, and a model that never sees clean
steel learns to find defects everywhere.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from datasets import Dataset, DatasetDict, Features, List, Value
from datasets import Image as ImageFeature
from PIL import Image

from common.image_io import SUPPORTED_FORMATS
from common.rle import TRAIN_CSV_HEADER, TRAIN_CSV_NAME, TRAIN_IMAGES_DIR, RLEError, rle_decode, rle_runs
from datagen.arguments import INFO_NAME
from train.data import DataError, load_named_dataset
from train.data import image_source as cell_source

NUM_DEFECT_CLASSES = 4
IMAGE = "image"
IMAGE_ID = "image_id"
RLES = "rles"
MASK = "mask"
HEIGHT = "height"
WIDTH = "width"
DEFECTS = "defects"
BACKGROUND = "background"
CSV_NAME = TRAIN_CSV_NAME
IMAGES_DIR = TRAIN_IMAGES_DIR
NEW_CSV_COLUMNS = TRAIN_CSV_HEADER
OLD_CSV_COLUMNS = ("ImageId_ClassId", "EncodedPixels")
# More missing images than this share of the data set means a wrong folder, not a few lost files.
MAX_SKIPPED_FRACTION = 0.05
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Masks must be lossless: JPEG blurs edges into values between class indices.
MASK_FORMATS = ("PNG", "BMP", "TIFF", "GIF")
MASK_MODES = frozenset({"L", "P"})
# How many offending names an error message lists.
_EXAMPLES = 5
# EXIF orientations (5-8) that rotate by 90 degrees: load_image applies them, which swaps
# width and height, so masks must be checked against the swapped size.
_ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112
_CLASS_ID = re.compile(r"\d+", re.ASCII)


@dataclass
class SegmentationData:
    """Segmentation data after loading and checking.

    Attributes:
        splits: One row per image: ``image_id``, ``image`` (a path, or an undecoded
            ``{"path", "bytes"}`` cell for hub data), ``height``, ``width``, ``defects``, and
            either ``rles`` or ``mask``.
        id2label: ``0`` is ``"background"``, then one name per defect class.
        skipped: ``(image, reason)`` for every image or mask left out.
    """

    splits: DatasetDict
    id2label: dict[int, str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


class _CsvRow(NamedTuple):
    line: int
    image_id: str
    class_id: int
    rle: str


# ---------------------------------------------------------------------------------------------
# Kaggle: train.csv + train_images/
# ---------------------------------------------------------------------------------------------


def load_kaggle(
    root_or_csv: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    *,
    num_classes: int = NUM_DEFECT_CLASSES,
) -> SegmentationData:
    """Loads a Kaggle Severstal-style data set: ``train.csv`` with RLE masks and an image folder.

    Args:
        root_or_csv: The folder holding ``train.csv`` (and ``train_images/``), or the CSV itself.
        images_dir: The image folder; defaults to ``train_images/`` next to the CSV.
        num_classes: Number of defect classes; ``ClassId`` must be 1 to this.

    Returns:
        A ``"train"`` split with one row per image, including clean ones: with the newer CSV,
        every image in ``images_dir`` without a row is clean. The older CSV lists every image,
        so only its images are used.

    Raises:
        DataError: For a missing CSV or folder, unknown columns, an unknown or repeated class
            for an image, a malformed RLE, or more than 5% missing images.
    """
    csv_path, images_dir = _kaggle_paths(Path(root_or_csv), None if images_dir is None else Path(images_dir))
    rows, newer_form = _read_kaggle_csv(csv_path, num_classes)
    by_image = _group_rows(rows, csv_path.name)
    files = _image_files(images_dir)
    names = sorted(set(by_image) | set(files)) if newer_form else sorted(by_image)
    missing = [(name, f"named in {csv_path.name} but not in {images_dir}") for name in names if name not in files]
    # Only images named in the CSV can go missing, so they are what the share is taken of.
    _check_skipped(
        missing,
        len(by_image),
        f"{csv_path.name} (images_dir='{images_dir}')",
        "Pass images_dir= (--images_dir) for the folder that holds them, or remove their rows from the CSV.",
    )
    records, unreadable = [], []
    for name in names:
        if name not in files:
            continue
        try:
            size = image_size(files[name])
        except DataError as error:
            unreadable.append((name, str(error)))
            continue
        records.append(_kaggle_record(name, files[name], size, by_image.get(name, {}), num_classes, csv_path.name))
    _check_skipped(unreadable, len(names), f"images_dir='{images_dir}'")
    skipped = missing + unreadable
    if not records:
        raise DataError(f"{csv_path} and {images_dir} hold no usable images; check the paths.")
    dataset = Dataset.from_list(records, features=_kaggle_features(num_classes))
    return SegmentationData(DatasetDict({"train": dataset}), read_id2label(csv_path.parent, num_classes), skipped)


def _kaggle_paths(root_or_csv: Path, images_dir: Path | None) -> tuple[Path, Path]:
    csv_path = root_or_csv / CSV_NAME if root_or_csv.is_dir() else root_or_csv
    if not csv_path.is_file():
        raise DataError(
            f"'{csv_path}' does not exist. Pass the folder holding {CSV_NAME} and {IMAGES_DIR}/, or the CSV file."
        )
    images_dir = images_dir if images_dir is not None else csv_path.parent / IMAGES_DIR
    if not images_dir.is_dir():
        raise DataError(f"Image folder '{images_dir}' does not exist. Pass images_dir= (--images_dir) explicitly.")
    return csv_path, images_dir


def _read_kaggle_csv(csv_path: Path, num_classes: int) -> tuple[list[_CsvRow], bool]:
    """All rows of a Kaggle CSV in either form, and whether it is the newer form."""
    # utf-8-sig: a CSV saved by Excel starts with a byte-order mark that would glue onto "ImageId".
    with csv_path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file, skipinitialspace=True)
        columns = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = columns
        newer_form = all(name in columns for name in NEW_CSV_COLUMNS)
        if not newer_form and not all(name in columns for name in OLD_CSV_COLUMNS):
            raise DataError(
                f"{csv_path} has columns {columns}; expected {','.join(NEW_CSV_COLUMNS)} (newer Kaggle form) or "
                f"{','.join(OLD_CSV_COLUMNS)} (older form)."
            )
        parse = _parse_new_row if newer_form else _parse_old_row
        return [parse(row, reader.line_num, csv_path.name, num_classes) for row in reader], newer_form


def _parse_new_row(row: dict, line: int, csv_name: str, num_classes: int) -> _CsvRow:
    image_id = (row["ImageId"] or "").strip()
    class_id = _class_id(row["ClassId"], f"{csv_name} line {line} (ImageId {image_id})", num_classes)
    return _CsvRow(line, image_id, class_id, (row["EncodedPixels"] or "").strip())


def _parse_old_row(row: dict, line: int, csv_name: str, num_classes: int) -> _CsvRow:
    combined = (row["ImageId_ClassId"] or "").strip()
    image_id, separator, class_text = combined.rpartition("_")
    if not separator or not image_id:
        raise DataError(
            f"{csv_name} line {line}: ImageId_ClassId {combined!r} is not '<ImageId>_<ClassId>' "
            "(for example '0002cc93b.jpg_1')."
        )
    class_id = _class_id(class_text, f"{csv_name} line {line} (ImageId {image_id})", num_classes)
    return _CsvRow(line, image_id, class_id, (row["EncodedPixels"] or "").strip())


def _class_id(text: str | None, where: str, num_classes: int) -> int:
    text = (text or "").strip()
    if not _CLASS_ID.fullmatch(text) or not 1 <= int(text) <= num_classes:
        raise DataError(
            f"{where}: ClassId {text!r} is not a defect class; classes are 1 to {num_classes}. Fix the row, or "
            "pass num_classes= if the data set has more classes."
        )
    return int(text)


def _group_rows(rows: list[_CsvRow], csv_name: str) -> dict[str, dict[int, _CsvRow]]:
    """``{ImageId: {ClassId: row}}``, refusing a class given twice for one image."""
    by_image: dict[str, dict[int, _CsvRow]] = {}
    for row in rows:
        _put_once(
            by_image.setdefault(row.image_id, {}),
            row.class_id,
            row,
            lambda first, again: (
                f"{csv_name} lines {first.line} and {again.line} both give ImageId "
                f"{again.image_id} ClassId {again.class_id}; keep one row per (image, class), with all its runs in one "
                "EncodedPixels."
            ),
        )
    return by_image


def _put_once(table: dict, key, value, clash) -> None:
    """``table[key] = value``, or a DataError with ``clash(first, again)`` when ``key`` is taken."""
    if key in table:
        raise DataError(clash(table[key], value))
    table[key] = value


def _kaggle_record(
    name: str, path: Path, size: tuple[int, int], classes: dict[int, _CsvRow], num_classes: int, csv_name: str
) -> dict:
    rles = [""] * num_classes
    for class_id, row in classes.items():
        where = f"{csv_name} line {row.line} (ImageId {name}, ClassId {class_id})"
        try:
            starts, _ = rle_runs(row.rle, size, row=where)
        except RLEError as error:
            raise DataError(str(error)) from error
        # An empty EncodedPixels (the older form's "absent") leaves the class out.
        rles[class_id - 1] = row.rle if starts.size else ""
    return {
        IMAGE_ID: name,
        IMAGE: str(path),
        RLES: rles,
        HEIGHT: size[0],
        WIDTH: size[1],
        DEFECTS: [int(bool(rle)) for rle in rles],
    }


def _kaggle_features(num_classes: int) -> Features:
    return Features(
        {
            IMAGE_ID: Value("string"),
            IMAGE: Value("string"),
            RLES: List(Value("string"), length=num_classes),
            HEIGHT: Value("int32"),
            WIDTH: Value("int32"),
            DEFECTS: List(Value("int8"), length=num_classes),
        }
    )


# ---------------------------------------------------------------------------------------------
# images/ + masks/ folders
# ---------------------------------------------------------------------------------------------


def load_mask_folders(
    root: str | os.PathLike[str],
    *,
    skip_missing_masks: bool = False,
    num_classes: int = NUM_DEFECT_CLASSES,
) -> SegmentationData:
    """Loads ``root/images/<name>.<ext>`` with class-index masks ``root/masks/<name>.png``.

    Args:
        root: The folder holding ``images/`` and ``masks/``. An optional
            ``dataset_info.json`` with ``class_names`` names the classes.
        skip_missing_masks: Skip (and list in ``skipped``) images without a mask instead of
            refusing the data set. A clean image needs an all-zero mask, not none.
        num_classes: Number of defect classes; mask values must be 0 to this.

    Returns:
        A ``"train"`` split with one row per image that has a mask.

    Raises:
        DataError: For missing folders, an image without a mask (unless skipped), a mask that is
            not a single-channel lossless image, has another size than its image, or holds a
            value above ``num_classes``; or more than 5% unreadable images.
    """
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"'{folder}' does not exist; load_mask_folders needs {root}/images/ and {root}/masks/.")
    images = _image_files(images_dir)
    by_stem = _unique_stems(images, images_dir)
    masks = {path.stem: path for path in masks_dir.iterdir() if path.suffix.lower() == ".png" and path.is_file()}
    missing = sorted(stem for stem in by_stem if stem not in masks)
    if missing and not skip_missing_masks:
        raise DataError(
            f"{len(missing)} images in '{images_dir}' have no mask in '{masks_dir}' "
            f"(first: {', '.join(by_stem[s].name for s in missing[:_EXAMPLES])}). Add masks/<name>.png (all zeros for "
            "a clean image) or pass skip_missing_masks=True to leave them out."
        )
    skipped = [(str(by_stem[stem]), f"no mask {stem}.png in {masks_dir}") for stem in missing]
    skipped += [(str(masks[stem]), "mask without an image") for stem in sorted(set(masks) - set(by_stem))]
    records, unreadable = [], []
    for stem, image_path in sorted(by_stem.items()):
        if stem not in masks:
            continue
        try:
            size = image_size(image_path)
        except DataError as error:
            unreadable.append((str(image_path), str(error)))
            continue
        defects = inspect_mask(masks[stem], size, str(image_path), num_classes)
        records.append(_mask_record(stem, str(image_path), str(masks[stem]), size, defects))
    _check_skipped(unreadable, len(by_stem), f"'{images_dir}'")
    if not records:
        raise DataError(f"'{images_dir}' holds no images with masks.")
    dataset = Dataset.from_list(records, features=_mask_features(Value("string"), Value("string"), num_classes))
    return SegmentationData(DatasetDict({"train": dataset}), read_id2label(root, num_classes), skipped + unreadable)


def _mask_record(image_id: str, image: object, mask: object, size: tuple[int, int], defects: list[int]) -> dict:
    return {IMAGE_ID: image_id, IMAGE: image, MASK: mask, HEIGHT: size[0], WIDTH: size[1], DEFECTS: defects}


def _unique_stems(images: dict[str, Path], images_dir: Path) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    for path in images.values():
        _put_once(
            by_stem,
            path.stem,
            path,
            lambda first, again: (
                f"'{images_dir}' has both {first.name} and {again.name}; both would use mask "
                f"{again.stem}.png. Rename or remove one."
            ),
        )
    return by_stem


def _mask_features(
    image_feature: Value | ImageFeature, mask_feature: Value | ImageFeature, num_classes: int
) -> Features:
    return Features(
        {
            IMAGE_ID: Value("string"),
            IMAGE: image_feature,
            MASK: mask_feature,
            HEIGHT: Value("int32"),
            WIDTH: Value("int32"),
            DEFECTS: List(Value("int8"), length=num_classes),
        }
    )


# ---------------------------------------------------------------------------------------------
# Hub datasets (and save_to_disk folders)
# ---------------------------------------------------------------------------------------------


def load_hub_segmentation(
    name: str,
    config: str | None = None,
    image_column: str = "image",
    mask_column: str = "mask",
    *,
    num_classes: int = NUM_DEFECT_CLASSES,
) -> SegmentationData:
    """Loads a dataset with an image column and a class-index mask image column.

    Args:
        name: A Hub dataset id, a local dataset folder, or a folder written by
            ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.
        config: The dataset configuration, if it has several.
        image_column: Column holding the images.
        mask_column: Column holding the masks (single-channel images of class indices).
        num_classes: Number of defect classes; mask values must be 0 to this.

    Returns:
        Every split of the dataset, standardised by :func:`standardise_segmentation`.

    Raises:
        DataError: If the dataset cannot be loaded (offline, a Hub id always fails: pass a local
            folder) or its columns or masks are unusable.
    """
    splits = _load_splits(name, config)
    standardised, skipped = standardise_segmentation(splits, image_column, mask_column, num_classes=num_classes)
    id2label = read_id2label(Path(name), num_classes) if Path(name).is_dir() else default_id2label(num_classes)
    return SegmentationData(standardised, id2label, skipped)


def _load_splits(name: str, config: str | None) -> DatasetDict:
    return load_named_dataset(
        name,
        config,
        what="dataset",
        offline_hint="pass a local folder: load_kaggle for train.csv + train_images/, load_mask_folders for "
        "images/ + masks/.",
    )


def standardise_segmentation(
    splits: DatasetDict,
    image_column: str = "image",
    mask_column: str = "mask",
    *,
    num_classes: int = NUM_DEFECT_CLASSES,
) -> tuple[DatasetDict, list[tuple[str, str]]]:
    """Renames to ``image``/``mask``, keeps both undecoded, and checks every mask once.

    Args:
        splits: Datasets whose image and mask columns are ``datasets.Image`` features or paths.
        image_column: Column holding the images.
        mask_column: Column holding the masks.
        num_classes: Number of defect classes; mask values must be 0 to this.

    Returns:
        ``(splits, skipped)``: each split with the columns of :class:`SegmentationData`, and the
        rows left out because their image could not be read.

    Raises:
        DataError: For a missing column, a column that is neither images nor paths, a bad mask,
            or more than 5% unreadable images in a split.
    """
    out, skipped = {}, []
    for split, dataset in splits.items():
        missing = [column for column in (image_column, mask_column) if column not in dataset.column_names]
        if missing:
            raise DataError(
                f"Split '{split}' has no column {missing[0]!r}; it has {dataset.column_names}. "
                "Set image_column= / mask_column= (--image_column_name / --mask_column_name) to the right names."
            )
        dataset = _undecoded(dataset.select_columns([image_column, mask_column]), split)
        records, split_skipped = _inspect_rows(dataset, image_column, mask_column, split, num_classes)
        _check_skipped(split_skipped, len(dataset), f"split '{split}'")
        if not records:
            raise DataError(f"Split '{split}' holds no readable images.")
        features = _mask_features(dataset.features[image_column], dataset.features[mask_column], num_classes)
        out[split] = Dataset.from_list(records, features=features)
        skipped += split_skipped
    return DatasetDict(out), skipped


def _undecoded(dataset: Dataset, split: str) -> Dataset:
    """Image columns as undecoded ``{"path", "bytes"}`` cells; path columns as they are."""
    for column, feature in dataset.features.items():
        if isinstance(feature, ImageFeature):
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
        elif feature != Value("string"):
            raise DataError(
                f"Split '{split}' column {column!r} is {feature}; expected images (datasets.Image) or file paths. "
                "Store masks as single-channel PNG images of class indices."
            )
    return dataset


def _inspect_rows(
    dataset: Dataset, image_column: str, mask_column: str, split: str, num_classes: int
) -> tuple[list[dict], list[tuple[str, str]]]:
    records, skipped = [], []
    for index, (image, mask) in enumerate(_pairs(dataset, image_column, mask_column)):
        where = describe_cell(image, f"{split}[{index}]")
        try:
            size = image_size(image)
        except DataError as error:
            skipped.append((where, str(error)))
            continue
        defects = inspect_mask(mask, size, where, num_classes)
        # A bytes-only image has no path; its position names it and keeps it apart from others.
        image_id = where if where != f"{split}[{index}]" else f"{split}-{index:06d}"
        records.append(_mask_record(image_id, image, mask, size, defects))
    return records, skipped


def _pairs(dataset: Dataset, image_column: str, mask_column: str) -> Iterator[tuple[object, object]]:
    # Batches, so that a large split is not held in memory all at once.
    for batch in dataset.iter(batch_size=256):
        yield from zip(batch[image_column], batch[mask_column])


# ---------------------------------------------------------------------------------------------
# Shared checks
# ---------------------------------------------------------------------------------------------


def read_id2label(directory: Path, num_classes: int = NUM_DEFECT_CLASSES) -> dict[int, str]:
    """Class names from ``directory/dataset_info.json`` (``class_names``), else the defaults."""
    info_path = directory / INFO_NAME
    if not info_path.is_file():
        return default_id2label(num_classes)
    try:
        info = json.loads(info_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"Cannot read '{info_path}': {error}. Fix or delete it (it only names the classes).") from error
    names = info.get("class_names") if isinstance(info, dict) else None
    if not isinstance(names, dict):
        # save_to_disk and the Hub write dataset_info.json files of their own, without class names.
        return default_id2label(num_classes)
    id2label = default_id2label(num_classes)
    for key, name in names.items():
        if not (isinstance(key, str) and _CLASS_ID.fullmatch(key) and 1 <= int(key) <= num_classes):
            raise DataError(
                f"'{info_path}' class_names has key {key!r}; keys must be the class ids '1' to '{num_classes}'."
            )
        id2label[int(key)] = str(name)
    return id2label


def default_id2label(num_classes: int = NUM_DEFECT_CLASSES) -> dict[int, str]:
    """``{0: "background", 1: "defect_1", ...}``."""
    return {0: BACKGROUND, **{class_id: f"defect_{class_id}" for class_id in range(1, num_classes + 1)}}


def _image_files(folder: Path) -> dict[str, Path]:
    """``{file name: path}`` of the images directly in ``folder``; hidden files are not images."""
    return {
        path.name: path
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
    }


def _check_skipped(
    skipped: list[tuple[str, str]], total: int, where: str, fix: str = "Check the folder and the files."
) -> None:
    if total and len(skipped) > MAX_SKIPPED_FRACTION * total:
        examples = "; ".join(f"{name}: {reason}" for name, reason in skipped[:3])
        raise DataError(
            f"{len(skipped)} of {total} images in {where} are missing or unreadable, more than "
            f"{MAX_SKIPPED_FRACTION:.0%}, which points to a wrong folder rather than a few bad files "
            f"(first: {examples}). {fix}"
        )


@cache
def _open_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    # Image.open(formats=...) raises KeyError for a format this Pillow build cannot open.
    Image.init()
    return tuple(name for name in formats if name in Image.OPEN)


def _open(source: object, formats: tuple[str, ...]) -> Image.Image:
    """Opens (without decoding) a path, bytes, ``{"path", "bytes"}`` cell or PIL image."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, dict):
        source = source.get("bytes") or source.get("path")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif not isinstance(source, (str, os.PathLike)):
        raise DataError(f"Expected an image path, bytes or {{'path', 'bytes'}} cell, got {type(source).__name__}.")
    try:
        return Image.open(source, formats=_open_formats(formats))
    except FileNotFoundError:
        raise DataError(f"'{source}' does not exist.") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow reports a broken header as any of these (see common.image_io).
        raise DataError(f"cannot read its header ({error}); export the file again") from error


def image_size(source: object) -> tuple[int, int]:
    """``(height, width)`` of an image as ``load_image`` will return it, from its header alone.

    Args:
        source: A path, bytes, undecoded ``{"path", "bytes"}`` cell or PIL image.

    Raises:
        DataError: If the file is missing or its header cannot be read.
    """
    image = _open(source, SUPPORTED_FORMATS)
    try:
        width, height = image.size
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read its header ({error}); export the file again") from error
    finally:
        if not isinstance(source, Image.Image):
            image.close()
    return (width, height) if orientation in _ROTATING_ORIENTATIONS else (height, width)


def inspect_mask(source: object, size: tuple[int, int], image_name: str, num_classes: int) -> list[int]:
    """Checks a class-index mask against its image and returns which defect classes it holds.

    Args:
        source: The mask: a path, bytes, undecoded cell or PIL image.
        size: ``(height, width)`` of its image.
        image_name: The image, for error messages.
        num_classes: Number of defect classes; values must be 0 to this.

    Returns:
        Multi-hot ``[has class 1, ..., has class num_classes]``.

    Raises:
        DataError: If the mask is unreadable, lossy, not single-channel, of another size, or
            holds a value above ``num_classes``.
    """
    values = read_mask(source, size, image_name)
    counts = np.bincount(values.ravel(), minlength=num_classes + 1)
    if counts.size > num_classes + 1:
        unknown = np.flatnonzero(counts[num_classes + 1 :]) + num_classes + 1
        raise DataError(
            f"Mask {describe_cell(source, '<mask>')} of image {image_name} holds values "
            f"{unknown[:_EXAMPLES].tolist()}, "
            f"which are not classes 0 (background) to {num_classes}. A 0/255 binary mask must be saved as 0/1; "
            "pass num_classes= if the data set has more classes."
        )
    return [int(count > 0) for count in counts[1:]]


def read_mask(source: object, size: tuple[int, int], image_name: str) -> np.ndarray:
    """The class-index values of a mask image as ``uint8``, refusing anything but L/P masks of ``size``."""
    mask_name = describe_cell(source, "<mask>")
    if not isinstance(source, Image.Image) and _looks_like_jpeg(source):
        raise DataError(f"Mask {mask_name} is a JPEG; JPEG changes class indices at defect edges. Save masks as PNG.")
    try:
        mask = _open(source, MASK_FORMATS)
    except DataError as error:
        raise DataError(f"Mask {mask_name} of image {image_name}: {error}") from error
    try:
        _check_mask_header(mask, mask_name, size, image_name)
        try:
            return np.asarray(mask, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError(f"Mask {mask_name} of image {image_name} is corrupt ({error}); export it again.") from error
    finally:
        if not isinstance(source, Image.Image):
            mask.close()


def _check_mask_header(mask: Image.Image, mask_name: str, size: tuple[int, int], image_name: str) -> None:
    if mask.mode not in MASK_MODES:
        raise DataError(
            f"Mask {mask_name} has mode {mask.mode}; masks must be single-channel (L or P) images of class "
            "indices, e.g. Image.fromarray(class_map.astype(np.uint8)).save('mask.png')."
        )
    if (mask.height, mask.width) != tuple(size):
        raise DataError(
            f"Mask {mask_name} is {mask.width} x {mask.height} (width x height) but its image {image_name} "
            f"is {size[1]} x {size[0]}; a mask must have its image's size."
        )


def _looks_like_jpeg(source: object) -> bool:
    if isinstance(source, dict):
        source = source.get("bytes") or source.get("path")
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:3]) == b"\xff\xd8\xff"
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in (".jpg", ".jpeg")


def image_source(example: dict) -> object:
    """What ``load_image`` reads for a standardised row: its image path, bytes or PIL image.

    Kaggle and folder rows hold a path string; hub rows an undecoded ``{"path", "bytes"}`` cell.
    """
    return cell_source(example[IMAGE])


def describe_cell(cell: object, fallback: str) -> str:
    """A name for an image or mask cell: its path, else ``fallback``."""
    if isinstance(cell, dict):
        return cell.get("path") or fallback
    if isinstance(cell, (str, os.PathLike)):
        return os.fsdecode(cell)
    return fallback


# ---------------------------------------------------------------------------------------------
# Per-example helpers used by training
# ---------------------------------------------------------------------------------------------


def decode_mask(example: dict, height: int | None = None, width: int | None = None) -> np.ndarray:
    """The class-index mask of one row, whatever the source.

    Args:
        example: A row with ``rles`` (one RLE per defect class) or ``mask`` (an image).
        height: Image height; defaults to the row's ``height``.
        width: Image width; defaults to the row's ``width``.

    Returns:
        A ``uint8`` ``(height, width)`` array: 0 background, ``k`` for defect class ``k``.
        Should RLEs of two classes overlap, the higher class wins.

    Raises:
        DataError: If the row has neither column or its mask has another size.
        RLEError: If an RLE is malformed (rows from the loaders were checked already).
    """
    height = int(example[HEIGHT] if height is None else height)
    width = int(example[WIDTH] if width is None else width)
    if example.get(RLES) is not None:
        mask = np.zeros((height, width), dtype=np.uint8)
        for class_id, rle in enumerate(example[RLES], start=1):
            if _has_runs(rle):
                mask[rle_decode(rle, (height, width), row=f"ImageId {example.get(IMAGE_ID)}, ClassId {class_id}")] = (
                    class_id
                )
        return mask
    if example.get(MASK) is not None:
        return read_mask(example[MASK], (height, width), describe_cell(example.get(IMAGE), "<image>"))
    raise DataError(
        f"The example has no {RLES!r} or {MASK!r} column (it has {sorted(example)}); load it with this module."
    )


def defect_presence(example: dict, num_classes: int = NUM_DEFECT_CLASSES) -> list[int]:
    """Multi-hot ``[has class 1, ..., has class 4]`` of one row, for the stage-1 classifier.

    Uses the row's ``defects`` column when it has one (every loader here adds it), else its
    ``rles``, else decodes its mask.
    """
    if example.get(DEFECTS) is not None:
        return [int(flag) for flag in example[DEFECTS]]
    if example.get(RLES) is not None:
        return [int(_has_runs(rle)) for rle in example[RLES]]
    counts = np.bincount(decode_mask(example).ravel(), minlength=num_classes + 1)
    return [int(count > 0) for count in counts[1 : num_classes + 1]]


def _has_runs(rle: str | float | None) -> bool:
    if rle is None or (isinstance(rle, float) and math.isnan(rle)):
        return False
    return bool(str(rle).strip())


def split_by_image(data: SegmentationData, validation_fraction: float = 0.15, seed: int = 0) -> SegmentationData:
    """Holds out ``validation_fraction`` of the training images, stratified on has-defect.

    All rows of one ``image_id`` go to the same side, and clean and defective images are split
    separately, so both sides keep the data set's share of clean images. A data set that
    already has a ``"validation"`` split is returned unchanged.

    Args:
        data: Loaded data with a ``"train"`` split.
        validation_fraction: Share of images to hold out, between 0 and 1.
        seed: Seed of the shuffle; the same seed gives the same split.

    Raises:
        DataError: If the fraction is out of range or there are too few images to split.
    """
    if "validation" in data.splits:
        return data
    if not 0 < validation_fraction < 1:
        raise DataError(f"validation_fraction={validation_fraction} must be between 0 and 1 (e.g. 0.15).")
    train = data.splits["train"]
    groups = _groups_by_defect(train)
    rng = np.random.default_rng(seed)
    held_out: list[int] = []
    for stratum in (False, True):
        image_ids = sorted(groups[stratum])
        count = _held_out_count(len(image_ids), validation_fraction)
        for position in rng.permutation(len(image_ids))[:count]:
            held_out.extend(groups[stratum][image_ids[position]])
    if not held_out or len(held_out) == len(train):
        raise DataError(
            f"Cannot split {len(train)} training rows into train and validation; add images or pass a validation split."
        )
    held = set(held_out)
    kept = [index for index in range(len(train)) if index not in held]
    splits = DatasetDict({**data.splits, "train": train.select(kept), "validation": train.select(sorted(held))})
    return dataclasses.replace(data, splits=splits)


def _groups_by_defect(train: Dataset) -> dict[bool, dict[str, list[int]]]:
    """``{has defect: {image_id: row indices}}``; an image is defective if any of its rows is."""
    image_ids = train[IMAGE_ID] if IMAGE_ID in train.column_names else [str(i) for i in range(len(train))]
    rows: dict[str, list[int]] = {}
    defective: set[str] = set()
    for index, (image_id, flags) in enumerate(zip(image_ids, _presence_column(train))):
        rows.setdefault(image_id, []).append(index)
        if any(flags):
            defective.add(image_id)
    groups: dict[bool, dict[str, list[int]]] = {False: {}, True: {}}
    for image_id, indices in rows.items():
        groups[image_id in defective][image_id] = indices
    return groups


def _presence_column(train: Dataset) -> Iterable[list[int]]:
    if DEFECTS in train.column_names:
        return train[DEFECTS]
    return (defect_presence(example) for example in train)


def _held_out_count(size: int, fraction: float) -> int:
    """Rounded share of ``size``, but at least one on each side when there are two or more."""
    if size < 2:
        return 0
    return min(max(round(size * fraction), 1), size - 1)
