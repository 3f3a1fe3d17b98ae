"""Severstal RLE: hand-checked vectors, round trips on random masks, and every malformed case."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from common.rle import RLEError, rle_decode, rle_encode, rle_runs

# A 4 x 3 mask; pixel numbers run down each column first:
#    1  5  9
#    2  6 10
#    3  7 11
#    4  8 12
# Run "2 2" is the vertical run 2-3 in column 1; run "8 3" wraps from the bottom of
# column 2 (pixel 8) to the top two of column 3 (pixels 9 and 10).
HAND_MASK = np.array(
    [
        [0, 0, 1],
        [1, 0, 1],
        [1, 0, 0],
        [0, 1, 0],
    ],
    dtype=bool,
)
HAND_RLE = "2 2 8 3"


def test_hand_vector_encodes_column_major_one_based():
    assert rle_encode(HAND_MASK) == HAND_RLE


def test_hand_vector_decodes():
    decoded = rle_decode(HAND_RLE, (4, 3))
    assert decoded.dtype == bool
    assert decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, HAND_MASK)


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (np.ones((2, 3), dtype=bool), "1 6"),  # Full mask: one run over every pixel.
        (np.zeros((2, 3), dtype=bool), ""),
        (np.eye(3, dtype=np.uint8), "1 1 5 1 9 1"),  # Diagonal: one pixel per column.
        (np.array([[1, 0, 1]], dtype=np.int64), "1 1 3 1"),  # A single row: every column is a run of its own.
        (np.array([[0], [1], [1], [0]]), "2 2"),  # A single column.
    ],
)
def test_small_vectors(mask, expected):
    assert rle_encode(mask) == expected
    np.testing.assert_array_equal(rle_decode(expected, mask.shape), mask.astype(bool))


def test_last_pixel_and_first_pixel():
    mask = np.zeros((256, 1600), dtype=bool)
    mask[0, 0] = mask[-1, -1] = True
    assert rle_encode(mask) == f"1 1 {256 * 1600} 1"


def test_adjacent_runs_are_accepted_and_merge_on_re_encoding():
    # Touching runs are not malformed (some tools write them); encoding joins them.
    decoded = rle_decode("1 2 3 2", (3, 2))
    assert decoded.sum() == 4
    assert rle_encode(decoded) == "1 4"


@pytest.mark.parametrize("empty", ["", "   ", "\n", None, float("nan")])
def test_empty_values_decode_to_an_empty_mask(empty):
    decoded = rle_decode(empty, (4, 5))
    assert decoded.shape == (4, 5) and not decoded.any()


def test_extra_whitespace_is_tolerated():
    np.testing.assert_array_equal(rle_decode("  2 2\t8  3\n", (4, 3)), HAND_MASK)


def test_rle_runs_gives_zero_based_starts():
    starts, lengths = rle_runs(HAND_RLE, (4, 3))
    assert starts.tolist() == [1, 7] and lengths.tolist() == [2, 3]


@settings(max_examples=150, deadline=None)
@given(
    arrays(
        bool,
        st.tuples(st.integers(1, 12), st.integers(1, 12)),
        elements=st.booleans(),
    )
)
def test_round_trip_property(mask):
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)
    # Encoding is canonical: sorted, separated runs, so decoding and re-encoding is a no-op.
    assert rle_encode(rle_decode(rle, mask.shape)) == rle


@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 0.5, 0.99, 1.0])
def test_round_trip_full_size_random_masks(density):
    rng = np.random.default_rng(int(density * 100))
    mask = rng.random((256, 1600)) < density
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)
    if density == 0.0:
        assert rle == ""
    if density == 1.0:
        assert rle == f"1 {256 * 1600}"


def test_round_trip_blobs_like_real_defects():
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = np.zeros((64, 400), dtype=bool)
        for _ in range(rng.integers(1, 5)):
            y, x = rng.integers(0, 64), rng.integers(0, 400)
            mask[y : y + rng.integers(1, 30), x : x + rng.integers(1, 200)] = True
        np.testing.assert_array_equal(rle_decode(rle_encode(mask), mask.shape), mask)


def test_encode_refuses_non_binary_and_non_2d_masks():
    with pytest.raises(ValueError, match=r"0/255 mask"):
        rle_encode(np.array([[0, 255]], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"class_map == class_id"):
        rle_encode(np.zeros((2, 3, 3), dtype=bool))


ROW = "row 17 (ImageId 0002cc93b.jpg, ClassId 3)"


@pytest.mark.parametrize(
    ("rle", "fragment"),
    [
        ("1 2 x 4", "token 3 of 4 is 'x', not an integer"),
        ("1 2.5", "token 2 of 2 is '2.5', not an integer"),
        ("1 1_0", "token 2 of 2 is '1_0', not an integer"),
        ("1, 2", "token 1 of 2 is '1,', not an integer"),
        ("1 2 3", "3 numbers, an odd count"),
        ("0 3", "run 1 (token 1) starts at 0"),
        ("5 2 -1 2", "run 2 (token 3) starts at -1"),
        ("1 0", "run 1 (token 2) has length 0"),
        ("1 2 6 -4", "run 2 (token 4) has length -4"),
        ("10 2", "goes past pixel 10, the last of a 5 x 2 image"),
        ("1 99999999999999999999", "far past the end"),
        ("6 2 1 2", "run 2 (token 3, start 1) starts before run 1 (start 6); runs must be sorted"),
        ("1 4 3 2", "run 2 (token 3, start 3) overlaps run 1, which covers pixels 1-4"),
    ],
)
def test_malformed_rle_names_the_problem_and_the_row(rle, fragment):
    with pytest.raises(RLEError) as caught:
        rle_decode(rle, (5, 2), row=ROW)
    message = str(caught.value)
    assert fragment in message
    assert ROW in message
    assert caught.value.row == ROW


def test_non_string_value_is_refused():
    with pytest.raises(RLEError, match="expected a string"):
        rle_decode(12.0, (5, 2))


def test_error_without_row_still_explains():
    with pytest.raises(RLEError, match=r"^Malformed RLE: run 1 \(token 2\) has length 0"):
        rle_decode("1 0", (5, 2))


def test_rle_error_survives_pickling():
    # Errors raised inside datasets.map(num_proc=...) workers are pickled back to the parent.
    error = RLEError("run 1 (token 2) has length 0", ROW)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.row == ROW


@pytest.mark.parametrize("shape", [(0, 5), (5,), ("a", 2), None])
def test_bad_shape_is_a_value_error(shape):
    with pytest.raises(ValueError, match="must be \\(height, width\\)"):
        rle_decode("1 1", shape)
