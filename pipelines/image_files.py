"""The image files a command line or an upload was given: folders searched recursively, files kept
as given, and zip archives unpacked safely (``common.archives``) with each member named inside its archive.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.archives import ArchiveLimits, extract_zip, is_zip_path


@dataclass(frozen=True)
class ImageFile:
    """One image of a batch: the name people see, the file to read, or why it cannot be read.

    Attributes:
        name: The path as given, or ``archive.zip/folder/image.png`` for a zip member.
        path: The file on disk (an extracted copy for a zip member); None when it could not be extracted.
        error: Why it cannot be read (a zip member that failed to unpack); None otherwise.
    """

    name: str
    path: Path | None
    error: str | None = None

    @property
    def file_name(self) -> str:
        """The last part of ``name`` (Kaggle's ImageId)."""
        return self.name.replace("\\", "/").rsplit("/", 1)[-1]


def iter_image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively, sorted) and keep files as given."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        else:
            files.append(path)
    return files


def collect_image_files(
    items: Sequence[str | os.PathLike | ImageFile],
    extract_to: str | os.PathLike | None = None,
    limits: ArchiveLimits | None = None,
    display_names: Sequence[str | None] | None = None,
) -> list[ImageFile]:
    """Folders (recursively), files and the members of ``.zip`` archives, in the order given.

    Args:
        items: Paths (files, folders, ``.zip`` archives) or ``ImageFile`` s, which are kept.
        extract_to: A folder (a temp dir) to unpack archives into, one sub-folder each; needed
            only when there is an archive.
        limits: Caps for each archive (``ArchiveLimits()`` by default).
        display_names: The name to show for each item instead of its path (an upload's original
            file name); None keeps the path.

    Raises:
        common.archives.ArchiveError: an archive refused as a whole; the message names it.
        ValueError: an archive and no ``extract_to``.
    """
    files: list[ImageFile] = []
    names = list(display_names) if display_names is not None else [None] * len(items)
    for index, (item, shown) in enumerate(zip(items, names, strict=True)):
        if isinstance(item, ImageFile):
            files.append(item)
            continue
        path = Path(item)
        label = shown or str(item)
        if path.is_file() and is_zip_path(path):
            if extract_to is None:
                raise ValueError(f"collect_image_files: {path} is a zip archive; pass extract_to (a temp folder)")
            members = extract_zip(path, Path(extract_to) / f"{index}-{path.stem}", limits)
            files.extend(ImageFile(f"{label}/{member.name}", member.path, member.error) for member in members)
        elif path.is_dir():
            files.extend(ImageFile(str(file) if shown is None else f"{shown}/{file.relative_to(path)}", file)
                         for file in iter_image_files([path]))  # fmt: skip
        else:
            files.append(ImageFile(label, path))
    return files
