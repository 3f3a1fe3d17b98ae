"""What every generator shares: the summary file it writes and the checks it makes before writing."""

from __future__ import annotations

# Every data set folder holds this summary (name, seed, size, classes, counts) beside its images.
INFO_NAME = "dataset_info.json"


def check_seed(seed: int) -> None:
    """Refuse a negative seed (numpy's generators take none), naming the value.

    Raises:
        ValueError: ``seed`` is negative.
    """
    if seed < 0:
        raise ValueError(f"seed={seed} must be a non-negative integer")
