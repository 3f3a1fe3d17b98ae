"""Labelled image sets for classification, from any source, checked before training.

Sources: a Hugging Face dataset (hub id or local dataset script-free repo), ``imagefolder``
directories (one sub-folder per class), or CSV files of ``path,label`` (several labels per
row for multi-label, separated by ``;``). Whatever the source, the result is a
``DatasetDict`` with two columns: ``image`` (undecoded: ``{"path", "bytes"}``) and
``labels`` (a class index, or a multi-hot list for multi-label), plus the label names.

Images are decoded only through ``common.image_io.load_image``, the same loader the
app uses, so a file that trains is a file that serves, and vice versa.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Sequence, Value, load_dataset
from datasets import Image as ImageFeature

from common.data_check import class_problems
from common.image_io import ImageLoadError, load_image
from train.data import DataError, describe_source, image_source, load_named_dataset

IMAGE = "image"
LABELS = "labels"
LABEL_SEPARATOR = ";"


@dataclass
class LabeledImages:
    """Training data after loading and checking."""

    splits: DatasetDict
    label_names: list[str]
    multi_label: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)


def load_imagefolder(directories: dict[str, str]) -> DatasetDict:
    """``{"train": dir, ...}`` of class sub-folders -> DatasetDict(image, label)."""
    for split, directory in directories.items():
        if not Path(directory).is_dir():
            raise DataError(
                f"--{split}_dir '{directory}' is not a directory. Give a folder with one sub-folder per class."
            )
    files = {split: str(Path(directory) / "**") for split, directory in directories.items()}
    try:
        splits = load_dataset("imagefolder", data_files=files)
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"Cannot read image folders {directories}: {error}") from error
    if "label" not in splits["train"].column_names:
        # imagefolder only infers labels from two or more class sub-folders.
        classes = sorted(p.name for p in Path(directories["train"]).iterdir() if p.is_dir())
        if len(classes) == 1:
            raise DataError(
                f"Found only one class ({classes[0]!r}) in --train_dir; a classifier needs at least two. "
                "Add a sub-folder of images per class."
            )
        raise DataError(
            f"--train_dir {directories['train']} has no class sub-folders. Put each class's images in a "
            "sub-folder named after the class (train/gear/*.png, train/nut/*.png, ...)."
        )
    return splits


def load_csv(files: dict[str, str], label_column: str, image_column: str = "path") -> DatasetDict:
    """CSV files with an image path column and a label column; paths relative to the CSV."""
    splits = {}
    for split, csv_path in files.items():
        if not Path(csv_path).is_file():
            raise DataError(f"--{split}_csv '{csv_path}' does not exist.")
        table = load_dataset("csv", data_files=csv_path, split="train", keep_default_na=False)
        _require_columns(table, [image_column, label_column], f"--{split}_csv {csv_path}")
        base = Path(csv_path).resolve().parent
        paths = [str(p if Path(p).is_absolute() else base / p) for p in table[image_column]]
        splits[split] = Dataset.from_dict({IMAGE: paths, label_column: [str(v) for v in table[label_column]]})
    return DatasetDict(splits)


def load_hub(name: str, config: str | None, split_names: dict[str, str]) -> DatasetDict:
    """Named splits of a Hugging Face dataset (hub id or local path)."""
    full = load_named_dataset(
        name,
        config,
        what="--dataset_name",
        offline_hint="pass local folders with --train_dir or CSV files with --train_csv instead.",
    )
    splits = {}
    for split, source in split_names.items():
        if source in full:
            splits[split] = full[source]
        elif split == "train":
            raise DataError(f"Dataset '{name}' has no split '{source}'; it has {sorted(full)}. Set --train_split.")
    return DatasetDict(splits)


def _require_columns(dataset: Dataset, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{where} has no column {missing[0]!r}; it has {dataset.column_names}. "
            "Set --image_column_name / --label_column_name to the right names."
        )


def standardise(
    splits: DatasetDict, image_column: str, label_column: str, multi_label: bool
) -> tuple[DatasetDict, list[str]]:
    """Rename to (image, labels), encode labels as indices or multi-hot, undecoded images."""
    for split, dataset in splits.items():
        _require_columns(dataset, [image_column, label_column], f"Split '{split}'")
    label_names = _label_names(splits, label_column, multi_label)
    index = {name: i for i, name in enumerate(label_names)}
    out = {}
    for split, dataset in splits.items():
        dataset = dataset.select_columns([image_column, label_column])
        if image_column != IMAGE:
            dataset = dataset.rename_column(image_column, IMAGE)
        values = _as_label_names(dataset, label_column)
        if multi_label:
            encoded = [[1.0 if name in _split_labels(v) else 0.0 for name in label_names] for v in values]
            feature = Sequence(Value("float32"), length=len(label_names))
        else:
            unknown = sorted({v for v in values if v not in index})
            if unknown:
                raise DataError(f"Split '{split}' has labels not seen in training: {unknown[:5]}.")
            encoded = [index[v] for v in values]
            feature = ClassLabel(names=label_names)
        dataset = dataset.remove_columns(label_column).add_column(LABELS, encoded, feature=feature)
        if isinstance(dataset.features[IMAGE], ImageFeature):
            dataset = dataset.cast_column(IMAGE, ImageFeature(decode=False))
        out[split] = dataset
    return DatasetDict(out), label_names


def _as_label_names(dataset: Dataset, label_column: str) -> list[str]:
    feature = dataset.features[label_column]
    values = dataset[label_column]
    if isinstance(feature, ClassLabel):
        return [feature.int2str(int(v)) for v in values]
    return [str(v) for v in values]


def _split_labels(value: str) -> set[str]:
    return {part.strip() for part in str(value).split(LABEL_SEPARATOR) if part.strip()}


def _label_names(splits: DatasetDict, label_column: str, multi_label: bool) -> list[str]:
    train = splits["train"]
    feature = train.features[label_column]
    if isinstance(feature, ClassLabel) and not multi_label:
        return list(feature.names)
    names: set[str] = set()
    for value in _as_label_names(train, label_column):
        names |= _split_labels(value) if multi_label else {value}
    return sorted(names)


def drop_unreadable(dataset: Dataset) -> tuple[Dataset, list[tuple[str, str]]]:
    """Decode every image once with the app's loader; keep the readable ones."""
    keep, skipped = [], []
    for i, item in enumerate(dataset[IMAGE]):
        try:
            load_image(image_source(item))
        except ImageLoadError as error:
            skipped.append((describe_source(item), error.reason))
        else:
            keep.append(i)
    return (dataset.select(keep) if skipped else dataset), skipped


def class_counts(dataset: Dataset, label_names: list[str], multi_label: bool) -> dict[str, int]:
    """Images per class (for multi-label: images carrying each label)."""
    labels = dataset[LABELS]
    if multi_label:
        totals = [0] * len(label_names)
        for row in labels:
            for i, flag in enumerate(row):
                totals[i] += int(flag > 0.5)
        return dict(zip(label_names, totals))
    counter = Counter(int(v) for v in labels)
    return {name: counter.get(i, 0) for i, name in enumerate(label_names)}


def check_classes(counts: dict[str, int]) -> None:
    """Refuse data that cannot train a classifier, naming the problem.

    The rule lives in ``common.data_check``, so the app's data check refuses the same data in
    the same words before it starts this script.
    """
    problems = class_problems(counts)
    if problems:
        raise DataError(problems[0])


def add_validation_split(splits: DatasetDict, fraction: float, seed: int, multi_label: bool) -> DatasetDict:
    """Hold out ``fraction`` of train as validation: stratified by class when possible."""
    if not 0 < fraction < 1:
        raise DataError(f"--train_val_split must be between 0 and 1, got {fraction}.")
    train = splits["train"]
    stratify = None if multi_label else LABELS
    if stratify and min(Counter(train[LABELS]).values()) < 2:
        stratify = None  # a class with one image cannot be in both parts
    parts = train.train_test_split(test_size=fraction, seed=seed, stratify_by_column=stratify)
    return DatasetDict({**splits, "train": parts["train"], "validation": parts["test"]})


def load_other_images(directory: str | os.PathLike) -> list[str]:
    """Image files under ``directory`` (recursively): "none of these" examples for open-set tuning."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"--other_dir '{directory}' is not a directory of images.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"--other_dir '{directory}' holds no files.")
    return [str(p) for p in files]
