"""Run-length encoding of binary masks in the Kaggle Severstal convention.

Pixels are numbered from 1, top to bottom and then left to right (column-major, Fortran
order), and a mask is written as ``"start length start length ..."``: each pair marks
``length`` consecutive pixels from pixel ``start``. An empty mask is the empty string.

For a 3-row image the numbering is::

    1 4 7
    2 5 8
    3 6 9

so ``"2 3"`` marks pixels 2, 3 and 4: the bottom two of the first column and the top of the
second.

Training loaders and the inference pipeline share this module, so what a model learns from
and what it writes back out follow one rule. Both directions are vectorised over runs, never
over pixels: a 256 x 1600 mask encodes or decodes in about a millisecond.
"""

from __future__ import annotations

import math
import re

import numpy as np

# Kaggle Severstal's CSV headers: the training file (one row per image and class present) and
# a submission (one row per image and class, empty EncodedPixels for none).
TRAIN_CSV_HEADER = ("ImageId", "ClassId", "EncodedPixels")
# The Kaggle folder layout: the training CSV beside the image folder.
TRAIN_CSV_NAME = "train.csv"
TRAIN_IMAGES_DIR = "train_images"
SUBMISSION_HEADER = ("ImageId", "EncodedPixels", "ClassId")

# A well-formed RLE is whitespace-separated ASCII integers (signs allowed so that "-3" is
# reported as a bad start rather than as "not a number"). re.ASCII keeps out digits from other
# scripts, and the explicit pattern keeps out "1_000" and "+5", which int() would accept.
_INTEGERS = re.compile(r"\s*-?\d+(?:\s+-?\d+)*\s*", re.ASCII)
_INTEGER = re.compile(r"-?\d+", re.ASCII)
# How much of a long RLE string an error message quotes.
_QUOTE_CHARS = 60


class RLEError(ValueError):
    """A run-length encoding that does not describe a mask of the given shape.

    Attributes:
        problem: What is wrong, naming the token where it is.
        row: Where the RLE came from (for example ``"train.csv line 17 (ImageId 0002cc93b.jpg,
            ClassId 3)"``), or ``None``.
    """

    def __init__(self, problem: str, row: str | None = None) -> None:
        where = f" in {row}" if row else ""
        super().__init__(f"Malformed RLE{where}: {problem}")
        self.problem = problem
        self.row = row

    def __reduce__(self) -> tuple[type[RLEError], tuple[str, str | None]]:
        # The default would call RLEError(message) and lose `row`; datasets.map(num_proc=...)
        # pickles errors raised in worker processes.
        return type(self), (self.problem, self.row)


def rle_encode(mask: np.ndarray) -> str:
    """Encodes a binary mask as Severstal RLE.

    Args:
        mask: A 2-D ``(height, width)`` array of bool, or of numbers that are all 0 or 1.

    Returns:
        ``"start length ..."`` with 1-based, column-major starts in increasing order, runs
        separated by at least one unmarked pixel; ``""`` for an empty mask.

    Raises:
        ValueError: If ``mask`` is not 2-D or holds values other than 0 and 1.

    Example:
        >>> rle_encode(np.array([[0, 1], [1, 1]], dtype=bool))
        '2 3'
    """
    flat = _as_binary(mask).ravel(order="F")
    # Padding with False on both sides makes every run start and end at a change of value.
    padded = np.concatenate(([False], flat, [False]))
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = changes[0::2], changes[1::2]
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))


def rle_decode(rle: str | float | None, shape: tuple[int, int], *, row: str | None = None) -> np.ndarray:
    """Decodes Severstal RLE into a boolean mask, refusing anything malformed.

    Args:
        rle: The ``"start length ..."`` string. ``""``, whitespace, ``None`` and NaN (how
            pandas reads an empty CSV cell) all mean an empty mask.
        shape: ``(height, width)`` of the image the RLE belongs to.
        row: Where the RLE came from, quoted in errors.

    Returns:
        A C-contiguous ``bool`` array of ``shape``.

    Raises:
        RLEError: If a token is not an integer, the count is odd, a start is below 1, a
            length below 1, a run goes past the last pixel, or runs are out of order or
            overlap. The message names the token and ``row``.
        ValueError: If ``shape`` is not two positive integers.

    Example:
        >>> rle_decode("2 3", (2, 2)).astype(int).tolist()
        [[0, 1], [1, 1]]
    """
    height, width = _check_shape(shape)
    starts, lengths = rle_runs(rle, (height, width), row=row)
    # +1 at each run's first pixel and -1 just after its last; the running sum is 1 inside
    # runs. Starts are distinct and ends are distinct, so each fancy-index update touches an
    # index at most once (repeated indices in `a[i] += 1` would only count once).
    steps = np.zeros(height * width + 1, dtype=np.int8)
    steps[starts] += 1
    steps[starts + lengths] -= 1
    flat = np.cumsum(steps[:-1], dtype=np.int8).astype(bool)
    return np.ascontiguousarray(flat.reshape((height, width), order="F"))


def rle_runs(
    rle: str | float | None, shape: tuple[int, int], *, row: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Parses and checks an RLE without building the mask.

    Loaders use this to validate every row once, cheaply, before training.

    Args:
        rle: As for :func:`rle_decode`.
        shape: As for :func:`rle_decode`.
        row: Where the RLE came from, quoted in errors.

    Returns:
        ``(starts, lengths)`` as ``int64`` arrays, with **0-based** starts into the
        column-major flattened image; both empty for an empty mask.

    Raises:
        RLEError: As for :func:`rle_decode`.
        ValueError: If ``shape`` is not two positive integers.
    """
    height, width = _check_shape(shape)
    values = _parse_tokens(rle, row)
    if values.size % 2:
        raise RLEError(
            f"it has {values.size} numbers, an odd count; RLE is 'start length' pairs, so the last run "
            f"(token {values.size}) has no length",
            row,
        )
    starts, lengths = values[0::2], values[1::2]
    _check_bounds(starts, lengths, height * width, (height, width), row)
    _check_order(starts, lengths, row)
    return starts - 1, lengths


def _as_binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(
            f"rle_encode() takes one 2-D (height, width) mask, got shape {mask.shape}; "
            "encode each class's mask separately (e.g. class_map == class_id)"
        )
    if mask.dtype == bool:
        return mask
    if mask.size and np.any((mask != 0) & (mask != 1)):
        found = np.unique(mask)[:6].tolist()
        raise ValueError(
            f"rle_encode() takes a binary mask of 0 and 1, got values {found}; pass "
            "class_map == class_id for a class-index map, or mask > 0 for a 0/255 mask"
        )
    return mask.astype(bool)


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(side) for side in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape={shape!r} must be (height, width), two positive integers") from None
    if height < 1 or width < 1:
        raise ValueError(f"shape={shape!r} must be (height, width), two positive integers")
    return height, width


def _parse_tokens(rle: str | float | None, row: str | None) -> np.ndarray:
    """Returns the integers of an RLE string, or names the first token that is not one."""
    if rle is None or (isinstance(rle, float) and math.isnan(rle)):
        return np.empty(0, dtype=np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"expected a string of 'start length' pairs, got {type(rle).__name__} {rle!r}", row)
    tokens = rle.split()
    if not _INTEGERS.fullmatch(rle):
        # Slow path, only for bad input: find the token to name. Tokens separated by
        # non-ASCII whitespace all pass here and are parsed below.
        for index, token in enumerate(tokens, start=1):
            if not _INTEGER.fullmatch(token):
                raise RLEError(f"token {index} of {len(tokens)} is {_quote(token)}, not an integer", row)
    try:
        return np.array(tokens, dtype=np.int64)
    except OverflowError:
        index = next(i for i, token in enumerate(tokens, start=1) if abs(int(token)) > np.iinfo(np.int64).max)
        raise RLEError(
            f"token {index} of {len(tokens)} is {_quote(tokens[index - 1])}, far past the end of any image", row
        ) from None


def _check_bounds(
    starts: np.ndarray, lengths: np.ndarray, n_pixels: int, shape: tuple[int, int], row: str | None
) -> None:
    bad = np.flatnonzero(starts < 1)
    if bad.size:
        run = bad[0]
        raise RLEError(
            f"run {run + 1} (token {2 * run + 1}) starts at {starts[run]}; starts are 1-based pixel numbers, "
            "so the first pixel is 1",
            row,
        )
    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        run = bad[0]
        raise RLEError(f"run {run + 1} (token {2 * run + 2}) has length {lengths[run]}; lengths must be 1 or more", row)
    # Compared as start > n_pixels - length + 1 so that huge values cannot overflow int64.
    bad = np.flatnonzero(starts > n_pixels - lengths + 1)
    if bad.size:
        run = bad[0]
        raise RLEError(
            f"run {run + 1} (tokens {2 * run + 1}-{2 * run + 2}: start {starts[run]}, length {lengths[run]}) "
            f"goes past pixel {n_pixels}, the last of a {shape[0]} x {shape[1]} image; check the image size "
            "(height, width) the RLE was written for",
            row,
        )


def _check_order(starts: np.ndarray, lengths: np.ndarray, row: str | None) -> None:
    if starts.size < 2:
        return
    previous_end = starts[:-1] + lengths[:-1]  # One past the previous run's last pixel.
    bad = np.flatnonzero(starts[1:] < previous_end)
    if not bad.size:
        return
    run = bad[0] + 1
    if starts[run] < starts[run - 1]:
        problem = f"starts before run {run} (start {starts[run - 1]}); runs must be sorted by start"
    else:
        last = starts[run - 1] + lengths[run - 1] - 1
        problem = f"overlaps run {run}, which covers pixels {starts[run - 1]}-{last}; runs must not overlap"
    raise RLEError(f"run {run + 1} (token {2 * run + 1}, start {starts[run]}) {problem}", row)


def _quote(token: str) -> str:
    return repr(token if len(token) <= _QUOTE_CHARS else token[:_QUOTE_CHARS] + "...")
