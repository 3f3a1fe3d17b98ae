"""Check a folder of training data before anything trains, with the training CLIs' own rules.

The app's Train tab runs the training CLIs as subprocesses, so what this check refuses must be
what the CLIs refuse, in the same words. The rules both need live here once:
:func:`class_problems` (``train.classification.data.check_classes`` raises its first
sentence) and :func:`unreadable_problem` (the ``--max_bad_fraction`` refusal).

:func:`check_training_data` finds the layout of a folder for a task, maps it to the CLI's data
flags, and opens every image once (through :func:`common.image_io.load_image`, the loader
training uses) to count classes and sizes, list unreadable files, pick thumbnails and find
files whose bytes appear in two splits. Problems come back as sentences, never as exceptions.

Layouts, by task::

    classifier   train/<class>/<image>   (+ validation/ or val/, test/, other/)
                 <class>/<image>          (validation held out by training)
                 train.csv                (path,label; optional validation.csv, test.csv)
    multi_label  train.csv or labels.csv  (path,label with labels joined by ';')
    segmenter    train.csv + train_images/   (Kaggle Severstal)
                 images/ + masks/            (class-index PNG masks)
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from common.archives import MACOS_RESOURCE_FORKS
from common.image_io import MAX_FILE_BYTES, ImageLoadError, load_image
from common.rle import TRAIN_CSV_HEADER, TRAIN_CSV_NAME, TRAIN_IMAGES_DIR, RLEError, rle_runs

TASKS = ("classifier", "multi_label", "segmenter")
TASK_NAMES = {
    "classifier": "image classifier",
    "multi_label": "multi-label classifier",
    "segmenter": "defect segmenter",
}
# The CLI takes any folder names through its flags; these are the names this check maps.
SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val", "valid"), "test": ("test",)}
SPLIT_FLAGS = {"train": "--train_dir", "validation": "--validation_dir", "test": "--test_dir"}
CSV_FLAGS = {"train": "--train_csv", "validation": "--validation_csv", "test": "--test_csv"}
CSV_NAMES = {"train": ("train.csv", "labels.csv"), "validation": ("validation.csv", "val.csv"), "test": ("test.csv",)}
OTHER_DIR = "other"
# split_other_images (train.classification.report) fits on the first and reports on the second.
OTHER_SUBSETS = (("calibration", "holdout"), ("validation", "test"))
IMAGES_DIR, MASKS_DIR = "images", "masks"
# The columns train.classification.train reads from a CSV by default.
PATH_COLUMN, LABEL_COLUMN = "path", "label"
LABEL_SEPARATOR = ";"
# train.segmentation.data: the older Kaggle CSV form, the number of defect classes and the
# image suffixes its loaders read (they live in train/, which common/ may not import).
OLD_KAGGLE_HEADER = ("ImageId_ClassId", "EncodedPixels")
NUM_DEFECT_CLASSES = 4
SEGMENTATION_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
CLEAN = "clean"
# The extensions datasets' imagefolder loader reads (datasets IMAGE_EXTENSIONS): the CLI never
# sees a file with another extension, and decodes (or counts as unreadable) every file with one.
IMAGEFOLDER_SUFFIXES = frozenset(
    ".blp .bmp .dib .bufr .cur .pcx .dcx .dds .ps .eps .fit .fits .fli .flc .ftc .ftu .gbr .gif .grib .png .apng "
    ".jp2 .j2k .jpc .jpf .jpx .j2c .icns .ico .im .iim .tif .tiff .jfif .jpe .jpg .jpeg .mpg .mpeg .msp .pcd .pxr "
    ".pbm .pgm .ppm .pnm .psd .bw .rgb .rgba .sgi .ras .tga .icb .vda .vst .webp .wmf .emf .xbm .xpm".split()
)
TINY_CLASS = 5  # fewer training images than this cannot both train and validate a class
MIXED_SIZE_RATIO = 4  # a longest side this many times the shortest image's is worth a warning
MAX_WRAPPERS = 3
_EXAMPLES = 3  # the CLI quotes the first three unreadable files
_FOUND = 5  # entries of an unexpected folder to show


@dataclass(frozen=True)
class DataCheck:
    """What a folder of training data holds, and whether the training CLI will take it.

    Attributes:
        task: One of :data:`TASKS`.
        root: The dataset root, after descending single wrapper folders.
        layout: The layout found, in words (empty when none was).
        counts: ``split -> class -> readable images``; segmenter classes are the defect classes
            (images containing each) and ``"clean"``; ``"other"`` maps ``"other"`` to its count.
        image_sizes: ``"WIDTHxHEIGHT" -> images``, most common first.
        thumbnails: ``class -> readable training image paths``.
        unreadable: ``(path relative to root, reason)``.
        duplicates: ``(path in one split, path of the same bytes in another split)``.
        refusals: Sentences naming each problem and its fix; empty when the data can train.
        warnings: What training will do that the user may not expect.
        data_flags: The training CLI's data flags for this data, with absolute paths.
    """

    task: str
    root: Path
    layout: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    image_sizes: dict[str, int] = field(default_factory=dict)
    thumbnails: dict[str, list[Path]] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    data_flags: list[str] = field(default_factory=list)

    @property
    def can_train(self) -> bool:
        """Whether the training CLI will accept this data (no refusals)."""
        return not self.refusals

    def to_dict(self) -> dict:
        """A JSON-able copy (paths as strings), for the app's data-check API answer."""
        return {
            "task": self.task,
            "root": str(self.root),
            "layout": self.layout,
            "can_train": self.can_train,
            "counts": {split: dict(classes) for split, classes in self.counts.items()},
            "image_sizes": dict(self.image_sizes),
            "thumbnails": {name: [str(path) for path in paths] for name, paths in self.thumbnails.items()},
            "unreadable": [list(row) for row in self.unreadable],
            "duplicates": [list(pair) for pair in self.duplicates],
            "refusals": list(self.refusals),
            "warnings": list(self.warnings),
            "data_flags": list(self.data_flags),
        }


# ---------------------------------------------------------------------------------------------
# The rules the CLIs share
# ---------------------------------------------------------------------------------------------


def class_problems(counts: dict[str, int]) -> list[str]:
    """Why training images per class cannot train a classifier; empty when they can.

    Args:
        counts: Readable training images per class (for multi-label: images carrying each label).

    Returns:
        One sentence for too few classes, else one per class without images.

    Example:
        >>> class_problems({"gear": 3, "nut": 0})
        ["Class 'nut' has no readable training images. Add images or remove the class."]
    """
    if not counts:
        return ["Found no classes; a classifier needs at least two. Add a sub-folder (or label) per class."]
    if len(counts) < 2:
        return [
            f"Found only one class ({list(counts)}); a classifier needs at least two. "
            "Add a sub-folder (or label) per class."
        ]
    return [
        f"Class {name!r} has no readable training images. Add images or remove the class."
        for name, count in counts.items()
        if count == 0
    ]


def unreadable_problem(
    split: str, bad: int, total: int, max_bad_fraction: float, examples: Sequence[tuple[str, str]] = ()
) -> str | None:
    """The ``--max_bad_fraction`` refusal for one split, or ``None`` when few enough are bad.

    Args:
        split: The split's name (``"train"``, ``"validation"``, ...).
        bad: Images of the split that cannot be read.
        total: Images of the split, readable or not.
        max_bad_fraction: The largest share of unreadable images training accepts.
        examples: ``(image, reason)`` of unreadable images; the first three are quoted.
    """
    if not bad or bad <= max_bad_fraction * total:
        return None
    first = "; ".join(f"{path}: {reason}" for path, reason in examples[:_EXAMPLES])
    return (
        f"{bad} of {total} {split} images cannot be read (more than --max_bad_fraction {max_bad_fraction:.0%}). "
        + (f"First: {first}. " if first else "")
        + "Fix or remove them, or raise --max_bad_fraction."
    )


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


def check_training_data(
    root: str | os.PathLike[str],
    task: str = "classifier",
    *,
    max_bad_fraction: float = 0.05,
    thumbnails_per_class: int = 4,
    use_other: bool = True,
) -> DataCheck:
    """Checks a folder of training data for ``task`` the way the training CLI will read it.

    Args:
        root: The data folder (an extracted zip or a server folder).
        task: One of :data:`TASKS`.
        max_bad_fraction: The CLI's ``--max_bad_fraction``: the largest share of unreadable
            images per split before the data is refused.
        thumbnails_per_class: Readable training images to show per class.
        use_other: Use an ``other/`` folder as images of none of the classes (``--other_dir``).

    Returns:
        The check; ``refusals`` says in words why training would refuse the data.

    Raises:
        ValueError: If ``task`` is not one of :data:`TASKS`.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}.")
    root = Path(root).resolve()
    if not root.is_dir():
        return DataCheck(task, root, "", refusals=[f"'{root}' is not a folder; give the folder that holds the data."])
    root = descend_wrappers(root)
    scan = _Scan(root, max_bad_fraction, thumbnails_per_class)
    if task == "segmenter":
        layout = _check_segmentation(scan)
    else:
        layout = _check_classification(scan, task, use_other)
    if layout is None:
        scan.refusals.append(_wrong_task_or_no_layout(root, task))
        layout = ""
    return scan.result(task, layout)


def descend_wrappers(root: Path) -> Path:
    """``root``, or the folder a zip of one folder (``parts/train/...``) wraps its data in.

    A folder is a wrapper when it holds exactly one folder and no images, and that folder holds
    folders. Split and layout folders (``train/``, ``images/``) are data, never wrappers.
    """
    data_names = {name for names in SPLIT_FOLDERS.values() for name in names} | {IMAGES_DIR, MASKS_DIR}
    for _ in range(MAX_WRAPPERS):
        folders, files = _entries(root)
        if len(folders) != 1 or any(_is_image(path) for path in files) or folders[0].name in data_names:
            break
        inner_folders, _ = _entries(folders[0])
        if not inner_folders:
            break
        root = folders[0]
    return root


# ---------------------------------------------------------------------------------------------
# Opening every file once
# ---------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    """What the check has seen so far: every image is opened and hashed here, once."""

    root: Path
    max_bad_fraction: float
    thumbnails_per_class: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)
    thumbnails: dict[str, list[Path]] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    within_split: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    data_flags: list[str] = field(default_factory=list)
    _seen: dict[str, tuple[str, str]] = field(default_factory=dict)  # SHA-256 -> (split, path)
    _refused: set[str] = field(default_factory=set)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    def open_image(self, path: Path, split: str) -> tuple[int, int] | None:
        """``(width, height)`` of a readable image, else ``None`` with the reason recorded."""
        relative = self.relative(path)
        if not path.resolve().is_relative_to(self.root):
            # A CSV row or a link may point anywhere on the server; the app shows thumbnails.
            self.unreadable.append((relative, "it is outside the data folder; give paths inside it"))
            return None
        try:
            data = _read_small_file(path)
            image = load_image(path if data is None else data)
        except ImageLoadError as error:
            self.unreadable.append((relative, error.reason))
            return None
        if data is not None:
            self._note_bytes(hashlib.sha256(data).hexdigest(), split, relative)
        self.sizes[f"{image.width}x{image.height}"] += 1
        return image.size

    def _note_bytes(self, digest: str, split: str, relative: str) -> None:
        first = self._seen.setdefault(digest, (split, relative))
        if first[1] != relative:
            (self.duplicates if first[0] != split else self.within_split).append((first[1], relative))

    def add_thumbnail(self, name: str, path: Path) -> None:
        shown = self.thumbnails.setdefault(name, [])
        if len(shown) < self.thumbnails_per_class:
            shown.append(path)

    def refuse_once(self, kind: str, sentence: str) -> None:
        """Refuses with the first problem of a kind only: a thousand bad masks need one sentence."""
        if kind not in self._refused:
            self._refused.add(kind)
            self.refusals.append(sentence)

    def refuse_unreadable(self, split: str, bad: list[tuple[str, str]], total: int) -> None:
        problem = unreadable_problem(split, len(bad), total, self.max_bad_fraction, bad)
        if problem:
            self.refusals.append(problem)

    def result(self, task: str, layout: str) -> DataCheck:
        return DataCheck(
            task=task,
            root=self.root,
            layout=layout,
            counts=self.counts,
            image_sizes=dict(self.sizes.most_common()),
            thumbnails=self.thumbnails,
            unreadable=self.unreadable,
            duplicates=self.duplicates,
            refusals=self.refusals,
            warnings=self.warnings + self._general_warnings(),
            data_flags=self.data_flags,
        )

    def _general_warnings(self) -> list[str]:
        warnings = []
        if self.duplicates:
            first, again = self.duplicates[0]
            warnings.append(
                f"{len(self.duplicates)} images appear in two splits (first: {again} is {first}); a test or "
                "validation image that is also trained on makes the score look better than it is. Remove the copies."
            )
        if self.within_split:
            first, again = self.within_split[0]
            warnings.append(
                f"{len(self.within_split)} images are byte-for-byte copies of another in the same split "
                f"(first: {again} is {first}); they weigh double in training."
            )
        if self.ignored:
            warnings.append(
                f"{len(self.ignored)} files are not images and are ignored (first: {', '.join(self.ignored[:_FOUND])})."
            )
        sides = [int(side) for size in self.sizes for side in size.split("x")]
        if sides and max(sides) >= MIXED_SIZE_RATIO * min(sides):
            warnings.append(
                f"Image sizes are very mixed ({len(self.sizes)} sizes, sides from {min(sides)} to {max(sides)} "
                "pixels); every image is resized to the model's input, which distorts the smallest or largest ones."
            )
        return warnings


def _read_small_file(path: Path) -> bytes | None:
    """The bytes of a regular file within the loader's size limit, else ``None``.

    ``None`` hands the path to ``load_image``, which refuses it with the right reason (missing,
    empty, too large, not a file) without reading a huge file into memory.
    """
    try:
        size = path.stat().st_size
        if not path.is_file() or not 0 < size <= MAX_FILE_BYTES:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _hidden(name: str) -> bool:
    # datasets' data-file patterns skip hidden names and "__" folders (__MACOSX, __pycache__).
    return name.startswith((".", "__")) or name == MACOS_RESOURCE_FORKS


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """Sorted (folders, files) directly in ``folder``, hidden ones left out."""
    folders, files = [], []
    for path in sorted(folder.iterdir()):
        if not _hidden(path.name):
            (folders if path.is_dir() else files).append(path)
    return folders, files


def _walk_files(folder: Path) -> Iterator[Path]:
    """Every non-hidden file below ``folder``, sorted; symbolic links to folders are not followed."""
    for current, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not _hidden(name))
        for name in sorted(files):
            if not _hidden(name):
                yield Path(current) / name


def _is_image(path: Path, suffixes: frozenset[str] = IMAGEFOLDER_SUFFIXES) -> bool:
    return path.suffix.lower() in suffixes


# ---------------------------------------------------------------------------------------------
# Classification: split folders, class folders, CSV
# ---------------------------------------------------------------------------------------------


def _check_classification(scan: _Scan, task: str, use_other: bool) -> str | None:
    """Checks the first classification layout found; ``None`` when there is none."""
    root = scan.root
    csvs = _label_csvs(root)
    if task == "multi_label":
        return _check_csv(scan, csvs, multi_label=True) if csvs else None
    if (root / "train").is_dir():
        return _check_split_folders(scan, use_other)
    if csvs:
        return _check_csv(scan, csvs, multi_label=False)
    if _guess_task(root) not in (None, "classifier"):
        return None
    folders, _ = _entries(root)
    if any(_is_image(path) for folder in folders for path in _entries(folder)[1]):
        return _check_class_folders(scan, use_other)
    return None


def _check_split_folders(scan: _Scan, use_other: bool) -> str:
    root = scan.root
    split_dirs = {"train": root / "train"}
    for split in ("validation", "test"):
        found = [root / name for name in SPLIT_FOLDERS[split] if (root / name).is_dir()]
        if found:
            split_dirs[split] = found[0]
        if len(found) > 1:
            scan.warnings.append(f"Both {' and '.join(f'{p.name}/' for p in found)} exist; {found[0].name}/ is used.")
    used = {path.name for path in split_dirs.values()} | {OTHER_DIR}
    for folder in _entries(root)[0]:
        if folder.name not in used:
            scan.warnings.append(f"{folder.name}/ is not a split folder and is not used by the classifier.")
    _check_imagefolder(scan, split_dirs)
    for split, folder in split_dirs.items():
        scan.data_flags += [SPLIT_FLAGS[split], str(folder)]
    if (root / OTHER_DIR).is_dir():
        _check_other(scan, root / OTHER_DIR, use_other)
    return "train/validation/test folders of classes" if len(split_dirs) > 1 else "train/ folder of classes"


def _check_class_folders(scan: _Scan, use_other: bool) -> str:
    root = scan.root
    if (root / OTHER_DIR).is_dir() and use_other:
        # --train_dir reads every sub-folder as a class, so other/ cannot sit beside the classes.
        scan.refusals.append(
            "other/ sits beside the class folders, so training would read it as a class. Put the classes in "
            "train/ beside other/ (train/<class>/<image>, other/<image>), or turn off the use of other/ to "
            "train it as a class named 'other'."
        )
    elif (root / OTHER_DIR).is_dir():
        scan.warnings.append("other/ is trained as a class named 'other' (the use of other/ is off).")
    _check_imagefolder(scan, {"train": root})
    scan.data_flags += [SPLIT_FLAGS["train"], str(root)]
    scan.warnings.append("There is no validation folder: training holds out part of the training images.")
    return "one folder per class (validation held out by training)"


def _check_imagefolder(scan: _Scan, split_dirs: dict[str, Path]) -> None:
    """Counts readable images per split and class, as datasets' imagefolder loader labels them."""
    classes: set[str] = set()
    misplaced: list[tuple[str, str]] = []  # (split, path)
    images: dict[str, dict[str, list[Path]]] = {}
    for split, folder in split_dirs.items():
        images[split] = {}
        for class_dir in _entries(folder)[0]:
            classes.add(class_dir.name)
            images[split][class_dir.name] = []
        for path in _walk_files(folder):
            if not _is_image(path):
                scan.ignored.append(scan.relative(path))
            elif path.parent.parent != folder:
                misplaced.append((split, scan.relative(path)))
            else:
                images[split][path.parent.name].append(path)
    if misplaced:
        # imagefolder names classes after the parent folder, and only when all images are at one depth.
        scan.refusals.append(
            f"{len(misplaced)} images are not directly inside a class folder (first: {misplaced[0][1]}), so training "
            "would read no classes at all. Put every image in <split>/<class>/<image>, with no deeper folders "
            "and no images beside the class folders."
        )
    for split, by_class in images.items():
        _count_classes(scan, split, {name: by_class.get(name, []) for name in sorted(classes)})
        if split != "train" and not any(by_class.values()) and split not in {where for where, _ in misplaced}:
            scan.refusals.append(
                f"{split_dirs[split].name}/ holds no images; add class folders of images or remove it."
            )
    _class_warnings(scan, scan.counts.get("train", {}))
    scan.refusals.extend(class_problems(scan.counts.get("train", {})))


def _count_classes(scan: _Scan, split: str, by_class: dict[str, list[Path]]) -> None:
    bad_before = len(scan.unreadable)
    counts = {}
    for name, paths in by_class.items():
        counts[name] = 0
        for path in paths:
            if scan.open_image(path, split) is not None:
                counts[name] += 1
                if split == "train":
                    scan.add_thumbnail(name, path)
    scan.counts[split] = counts
    scan.refuse_unreadable(split, scan.unreadable[bad_before:], sum(len(paths) for paths in by_class.values()))


def _class_warnings(scan: _Scan, train_counts: dict[str, int]) -> None:
    tiny = [name for name, count in train_counts.items() if 0 < count < TINY_CLASS]
    if tiny:
        scan.warnings.append(
            f"Classes with fewer than {TINY_CLASS} training images: {', '.join(tiny)}; they will be learned "
            "poorly and validated on one image or none. Add images."
        )


def _check_other(scan: _Scan, folder: Path, use_other: bool) -> None:
    if not use_other:
        scan.warnings.append("other/ is ignored: the use of other/ as images of none of the classes is off.")
        return
    subsets = next(((a, b) for a, b in OTHER_SUBSETS if (folder / a).is_dir() and (folder / b).is_dir()), None)
    parts = [folder / name for name in subsets] if subsets else [folder]
    empty = [part for part in parts if not any(_walk_files(part))]
    if empty:
        # train.classification.data.load_other_images would refuse it, so the flag is left out.
        scan.warnings.append(f"{scan.relative(empty[0])}/ holds no files, so other/ is not used.")
        return
    readable = 0
    for path in _walk_files(folder):
        if _is_image(path):
            readable += scan.open_image(path, OTHER_DIR) is not None
        else:
            scan.ignored.append(scan.relative(path))
    scan.counts[OTHER_DIR] = {OTHER_DIR: readable}
    scan.data_flags += ["--other_dir", str(folder)]
    scan.warnings.append(
        f"other/ ({readable} images) is used as images of none of the classes, to tune the 'unknown' answer."
    )


def _label_csvs(root: Path) -> dict[str, Path]:
    """``split -> CSV`` of path,label files in ``root`` (a Kaggle train.csv is not one)."""
    found = {}
    for split, names in CSV_NAMES.items():
        for name in names:
            if (root / name).is_file() and PATH_COLUMN in _csv_header(root / name):
                found[split] = root / name
                break
    return found if "train" in found else {}


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            return [name.strip() for name in next(csv.reader(file), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _check_csv(scan: _Scan, csvs: dict[str, Path], multi_label: bool) -> str:
    rows = {split: _read_label_csv(scan, path) for split, path in csvs.items()}
    if scan.refusals:
        return "CSV of path,label"
    label_names = sorted({name for _, labels in rows["train"] for name in _labels(labels, multi_label)})
    for split, split_rows in rows.items():
        _count_csv_split(scan, split, split_rows, label_names, multi_label)
        scan.data_flags += [CSV_FLAGS[split], str(csvs[split])]
    train_counts = scan.counts["train"]
    _class_warnings(scan, train_counts)
    scan.refusals.extend(class_problems(train_counts))
    if not multi_label and any(LABEL_SEPARATOR in name for name in label_names):
        scan.warnings.append(
            f"Some labels hold '{LABEL_SEPARATOR}' and each such combination trains as one class; for several "
            "labels per image pick the multi-label classifier task."
        )
    if "validation" not in csvs:
        scan.warnings.append("There is no validation CSV: training holds out part of the training images.")
    return "CSV of path,label" + (" (labels joined by ';')" if multi_label else "")


def _read_label_csv(scan: _Scan, path: Path) -> list[tuple[Path, str]]:
    """``(image path, label text)`` rows; image paths are relative to the CSV, as the CLI reads them."""
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        columns = [name.strip() for name in reader.fieldnames or []]
        if LABEL_COLUMN not in columns:
            scan.refusals.append(
                f"{path.name} has no column {LABEL_COLUMN!r}; it has {columns}. Name its columns "
                f"{PATH_COLUMN},{LABEL_COLUMN}."
            )
            return []
        reader.fieldnames = columns
        return [(path.parent / (row[PATH_COLUMN] or ""), row[LABEL_COLUMN] or "") for row in reader]


def _labels(text: str, multi_label: bool) -> set[str]:
    if not multi_label:
        return {text}
    return {part.strip() for part in text.split(LABEL_SEPARATOR) if part.strip()}


def _count_csv_split(
    scan: _Scan, split: str, rows: list[tuple[Path, str]], label_names: list[str], multi_label: bool
) -> None:
    bad_before = len(scan.unreadable)
    counts = dict.fromkeys(label_names, 0)
    unknown: set[str] = set()
    for path, text in rows:
        labels = _labels(text, multi_label)
        unknown |= labels - counts.keys()
        if scan.open_image(path, split) is None:
            continue
        for name in labels & counts.keys():
            counts[name] += 1
            if split == "train":
                scan.add_thumbnail(name, path)
    scan.counts[split] = counts
    scan.refuse_unreadable(split, scan.unreadable[bad_before:], len(rows))
    if unknown and not multi_label:
        scan.refusals.append(f"Split '{split}' has labels not seen in training: {sorted(unknown)[:5]}.")
    elif unknown:
        scan.warnings.append(f"{split} labels not seen in training are ignored: {sorted(unknown)[:5]}.")


# ---------------------------------------------------------------------------------------------
# Segmentation: Kaggle train.csv + train_images/, images/ + masks/
# ---------------------------------------------------------------------------------------------


def _check_segmentation(scan: _Scan) -> str | None:
    root = scan.root
    if _kaggle_form(root / TRAIN_CSV_NAME) is not None:
        if not (root / TRAIN_IMAGES_DIR).is_dir():
            scan.refusals.append(
                f"Image folder '{root / TRAIN_IMAGES_DIR}' does not exist. Put the images named in "
                f"{TRAIN_CSV_NAME} in {TRAIN_IMAGES_DIR}/ beside it."
            )
        else:
            _check_kaggle(scan)
        scan.data_flags += ["--data_dir", str(root)]
        return f"Kaggle steel layout ({TRAIN_CSV_NAME} + {TRAIN_IMAGES_DIR}/)"
    if (root / IMAGES_DIR).is_dir() and (root / MASKS_DIR).is_dir():
        _check_mask_folders(scan)
        scan.data_flags += ["--mask_dir", str(root)]
        return f"{IMAGES_DIR}/ + {MASKS_DIR}/"
    return None


def _kaggle_form(csv_path: Path) -> str | None:
    """``"new"`` or ``"old"`` for a Kaggle Severstal CSV, else ``None``."""
    columns = _csv_header(csv_path) if csv_path.is_file() else []
    if all(name in columns for name in TRAIN_CSV_HEADER):
        return "new"
    return "old" if all(name in columns for name in OLD_KAGGLE_HEADER) else None


def _defect_names() -> list[str]:
    # train.segmentation.data.default_id2label's names; dataset_info.json may rename them there.
    return [f"defect_{class_id}" for class_id in range(1, NUM_DEFECT_CLASSES + 1)]


def _check_kaggle(scan: _Scan) -> None:
    root = scan.root
    newer = _kaggle_form(root / TRAIN_CSV_NAME) == "new"
    by_image = _read_kaggle_rows(scan, root / TRAIN_CSV_NAME, newer)
    if by_image is None:
        return
    files = {path.name: path for path in _entries(root / TRAIN_IMAGES_DIR)[1] if _is_image(path, SEGMENTATION_SUFFIXES)}
    names = sorted(set(by_image) | set(files)) if newer else sorted(by_image)
    missing = [name for name in names if name not in files]
    if missing and len(missing) > scan.max_bad_fraction * len(by_image):
        scan.refusals.append(
            f"{len(missing)} of {len(by_image)} images named in {TRAIN_CSV_NAME} are not in {TRAIN_IMAGES_DIR}/ "
            f"(first: {missing[0]}). Add them, or remove their rows from {TRAIN_CSV_NAME}."
        )
    scan.unreadable += [(name, f"named in {TRAIN_CSV_NAME} but not in {TRAIN_IMAGES_DIR}/") for name in missing]
    counts = dict.fromkeys([*_defect_names(), CLEAN], 0)
    bad_before = len(scan.unreadable)
    for name in names:
        if name in files:
            size = scan.open_image(files[name], "train")
            if size is not None:
                _count_kaggle_image(scan, counts, files[name], size, by_image.get(name, {}))
    scan.counts["train"] = counts
    # The CLI takes this share of every image it knows of, missing ones included.
    scan.refuse_unreadable("train", scan.unreadable[bad_before:], len(names))
    _segmentation_problems(scan, counts)


def _read_kaggle_rows(scan: _Scan, csv_path: Path, newer: bool) -> dict[str, dict[int, tuple[int, str]]] | None:
    """``{ImageId: {ClassId: (line, EncodedPixels)}}``, or ``None`` after refusing a bad row."""
    by_image: dict[str, dict[int, tuple[int, str]]] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file, skipinitialspace=True)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        for row in reader:
            if newer:
                image_id, class_text = (row["ImageId"] or "").strip(), (row["ClassId"] or "").strip()
            else:
                image_id, _, class_text = (row["ImageId_ClassId"] or "").strip().rpartition("_")
            where = f"{csv_path.name} line {reader.line_num} (ImageId {image_id})"
            if not (class_text.isascii() and class_text.isdigit()) or not 1 <= int(class_text) <= NUM_DEFECT_CLASSES:
                scan.refusals.append(
                    f"{where}: ClassId {class_text!r} is not a defect class; classes are 1 to {NUM_DEFECT_CLASSES}. "
                    "Fix the row."
                )
                return None
            classes = by_image.setdefault(image_id, {})
            if int(class_text) in classes:
                scan.refusals.append(
                    f"{csv_path.name} lines {classes[int(class_text)][0]} and {reader.line_num} both give ImageId "
                    f"{image_id} ClassId {class_text}; keep one row per (image, class)."
                )
                return None
            classes[int(class_text)] = (reader.line_num, (row["EncodedPixels"] or "").strip())
    return by_image


def _count_kaggle_image(
    scan: _Scan, counts: dict[str, int], path: Path, size: tuple[int, int], classes: dict[int, tuple[int, str]]
) -> None:
    present = []
    for class_id, (line, rle) in sorted(classes.items()):
        where = f"{TRAIN_CSV_NAME} line {line} (ImageId {path.name}, ClassId {class_id})"
        try:
            starts, _ = rle_runs(rle, (size[1], size[0]), row=where)
        except RLEError as error:
            scan.refuse_once("rle", f"{error}.")
            continue
        if starts.size:  # the older form's empty EncodedPixels means "absent"
            present.append(_defect_names()[class_id - 1])
    _count_segmentation_image(scan, counts, path, present)


def _count_segmentation_image(scan: _Scan, counts: dict[str, int], path: Path, present: list[str]) -> None:
    for name in present or [CLEAN]:
        counts[name] += 1
        scan.add_thumbnail(name, path)


def _check_mask_folders(scan: _Scan) -> None:
    images_dir, masks_dir = scan.root / IMAGES_DIR, scan.root / MASKS_DIR
    by_stem: dict[str, Path] = {}
    for path in _entries(images_dir)[1]:
        if not _is_image(path, SEGMENTATION_SUFFIXES):
            scan.ignored.append(scan.relative(path))
        elif path.stem in by_stem:
            scan.refusals.append(
                f"'{images_dir}' has both {by_stem[path.stem].name} and {path.name}; both would use mask "
                f"{path.stem}.png. Rename or remove one."
            )
        else:
            by_stem[path.stem] = path
    masks = {path.stem: path for path in _entries(masks_dir)[1] if path.suffix.lower() == ".png"}
    missing = sorted(stem for stem in by_stem if stem not in masks)
    if missing:
        scan.refusals.append(
            f"{len(missing)} images in {IMAGES_DIR}/ have no mask in {MASKS_DIR}/ (first: "
            f"{', '.join(by_stem[stem].name for stem in missing[:_FOUND])}). Add {MASKS_DIR}/<name>.png (all zeros "
            "for a clean image)."
        )
    orphans = sorted(set(masks) - set(by_stem))
    if orphans:
        scan.warnings.append(f"{len(orphans)} masks have no image and are ignored (first: {masks[orphans[0]].name}).")
    counts = dict.fromkeys([*_defect_names(), CLEAN], 0)
    bad_before = len(scan.unreadable)
    for stem, path in sorted(by_stem.items()):
        size = scan.open_image(path, "train")
        if size is None or stem not in masks:
            continue
        problem, present = _read_mask_classes(masks[stem], size, path.name)
        if problem:
            scan.refuse_once("mask", problem)
        else:
            _count_segmentation_image(scan, counts, path, present)
    scan.counts["train"] = counts
    scan.refuse_unreadable("train", scan.unreadable[bad_before:], len(by_stem))
    _segmentation_problems(scan, counts)


def _read_mask_classes(mask_path: Path, size: tuple[int, int], image_name: str) -> tuple[str | None, list[str]]:
    """(a refusal or ``None``, the defect classes in the mask), by train.segmentation.data's rules."""
    name = f"{MASKS_DIR}/{mask_path.name}"
    try:
        with Image.open(mask_path, formats=("PNG",)) as mask:
            if mask.mode not in ("L", "P"):
                return f"Mask {name} has mode {mask.mode}; masks must be single-channel (L or P) class indices.", []
            if mask.size != size:
                return (
                    f"Mask {name} is {mask.width} x {mask.height} (width x height) but its image {image_name} is "
                    f"{size[0]} x {size[1]}; a mask must have its image's size.",
                    [],
                )
            values = np.asarray(mask, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as error:
        return f"Mask {name} of image {image_name} cannot be read ({error}); export it again.", []
    classes = np.flatnonzero(np.bincount(values.ravel(), minlength=NUM_DEFECT_CLASSES + 1))
    unknown = classes[classes > NUM_DEFECT_CLASSES]
    if unknown.size:
        return (
            f"Mask {name} of image {image_name} holds values {unknown[:_FOUND].tolist()}, "
            f"which are not classes 0 (background) to {NUM_DEFECT_CLASSES}. A 0/255 binary mask must be saved as 0/1.",
            [],
        )
    return None, [_defect_names()[class_id - 1] for class_id in classes if class_id > 0]


def _segmentation_problems(scan: _Scan, counts: dict[str, int]) -> None:
    if not sum(counts.values()):
        scan.refusals.append(f"'{scan.root}' holds no usable images; check the folder.")
    elif not sum(count for name, count in counts.items() if name != CLEAN):
        scan.warnings.append("No image has a defect: the segmenter would only learn to answer 'clean'.")


# ---------------------------------------------------------------------------------------------
# No layout: the wrong task, or an unexpected folder
# ---------------------------------------------------------------------------------------------

_EXPECTED = {
    "classifier": (
        "train/<class>/<image>  (optional validation/ or val/, test/, other/)",
        "<class>/<image>        (one folder per class)",
        "train.csv              (columns path,label; optional validation.csv, test.csv)",
    ),
    "multi_label": ("train.csv or labels.csv  (columns path,label; labels joined by ';')",),
    "segmenter": (
        f"{TRAIN_CSV_NAME} + {TRAIN_IMAGES_DIR}/<image>  (Kaggle steel: {','.join(TRAIN_CSV_HEADER)})",
        f"{IMAGES_DIR}/<name>.png + {MASKS_DIR}/<name>.png  (class-index masks)",
    ),
}
_LOOKS_LIKE = {
    "classifier": "classification data (folders of classes)",
    "multi_label": "multi-label data (a CSV with labels joined by ';')",
    "segmenter": "segmentation data",
}


def _guess_task(root: Path) -> str | None:
    """The task whose layout ``root`` has, whatever task was asked for; ``None`` for no layout."""
    if _kaggle_form(root / TRAIN_CSV_NAME) or ((root / IMAGES_DIR).is_dir() and (root / MASKS_DIR).is_dir()):
        return "segmenter"
    csvs = _label_csvs(root)
    if csvs:
        with csvs["train"].open(newline="", encoding="utf-8-sig") as file:
            labels = [row.get(LABEL_COLUMN) or "" for row in csv.DictReader(file)]
        return "multi_label" if any(LABEL_SEPARATOR in label for label in labels) else "classifier"
    if (root / "train").is_dir():
        return "classifier"
    folders, _ = _entries(root)
    if any(_is_image(path) for folder in folders for path in _entries(folder)[1]):
        return "classifier"
    return None


def _wrong_task_or_no_layout(root: Path, task: str) -> str:
    guess = _guess_task(root)
    if guess and guess != task:
        return f"This looks like {_LOOKS_LIKE[guess]}: pick the {TASK_NAMES[guess]} task."
    folders, files = _entries(root)
    found = [f"{path.name}/" for path in folders] + [path.name for path in files]
    tree = "\n".join(f"  {line}" for line in _EXPECTED[task])
    shown = ", ".join(found[:_FOUND]) + (", ..." if len(found) > _FOUND else "") if found else "nothing"
    return f"No {TASK_NAMES[task]} data layout found in '{root}'. Expected one of:\n{tree}\nFound: {shown}."
