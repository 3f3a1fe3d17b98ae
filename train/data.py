"""What every task's data loader shares: the data error and undecoded image cells.

Datasets keep images undecoded (``{"path", "bytes"}`` cells) until a transform needs them, and
decode them only through ``common.image_io.load_image``, the loader the app uses.
"""

from __future__ import annotations


class DataError(ValueError):
    """The training data cannot be used as given; the message says how to fix it."""


def image_source(item) -> str | bytes:
    """What ``load_image`` takes for one undecoded ``image`` cell."""
    if isinstance(item, dict):
        return item.get("bytes") or item["path"]
    return item


def describe_source(item) -> str:
    """A name for one undecoded ``image`` cell, for messages and the skipped-images list."""
    if isinstance(item, dict):
        return item.get("path") or "<embedded image>"
    return str(item)
