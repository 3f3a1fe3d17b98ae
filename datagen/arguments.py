"""Argument checks every generator makes before it writes anything."""

from __future__ import annotations


def check_seed(seed: int) -> None:
    """Refuse a negative seed (numpy's generators take none), naming the value.

    Raises:
        ValueError: ``seed`` is negative.
    """
    if seed < 0:
        raise ValueError(f"seed={seed} must be a non-negative integer")
