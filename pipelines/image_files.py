"""The image files a command line was given: folders searched recursively, files kept as given."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


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
