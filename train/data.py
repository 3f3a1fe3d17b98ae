"""What every task's data loader shares: the data error and undecoded image cells.

Datasets keep images undecoded (``{"path", "bytes"}`` cells) until a transform needs them, and
decode them only through ``common.image_io.load_image``, the loader the app uses.
"""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict, load_dataset, load_from_disk


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


def load_named_dataset(name: str, config: str | None, *, what: str, offline_hint: str) -> DatasetDict:
    """A Hugging Face dataset by hub id or local path (``save_to_disk`` output included), as splits.

    Args:
        name, config: What ``datasets.load_dataset`` takes.
        what: How the error names the dataset (e.g. the flag that gave it).
        offline_hint: What to pass instead when the Hub is out of reach.

    Raises:
        DataError: The dataset cannot be loaded; the message says what to do offline.
    """
    path = Path(name)
    try:
        # load_dataset cannot read save_to_disk output, which these marker files identify.
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = load_from_disk(str(path))
        else:
            loaded = load_dataset(name, config)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as error:
        raise DataError(f"Cannot load {what} '{name}': {error}. Offline, {offline_hint}") from error
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
