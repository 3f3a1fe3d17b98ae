"""Where a job's training data comes from: an uploaded zip, a folder on the server, or the reviewed images.

Zips are opened with ``common.archives`` (no member may leave the job's folder; members, bytes
and compression ratio are capped) into a check folder named after the zip's SHA-256, so the data
check and the job that follows read the same extraction, and the job takes the folder over
without extracting twice. A server folder must lie under the data root the app was started with.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from common.archives import ArchiveError, ArchiveLimits, extract_zip, is_zip_path
from common.image_io import MAX_FILE_BYTES

CHECKS_FOLDER = ".checks"
# Written last into a check folder: the extraction is whole; it lists the members that could not be read.
COMPLETE_FILE = ".unpacked.json"
# A training set is bigger than an inspection batch: up to 100,000 files and 8 GiB unpacked.
TRAINING_ARCHIVE_LIMITS = ArchiveLimits(
    max_members=100_000, max_total_bytes=8 * 1024**3, max_member_bytes=MAX_FILE_BYTES, max_ratio=200.0
)
_CHECK_FOLDERS_KEPT_SECONDS = 24 * 3600


class DataSourceError(ValueError):
    """The chosen data cannot be read as given; the message names it and the fix."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack_zip(
    archive: str | os.PathLike, jobs_root: Path, limits: ArchiveLimits = TRAINING_ARCHIVE_LIMITS
) -> tuple[Path, list[tuple[str, str]]]:
    """The zip's files in a check folder under ``jobs_root`` (reused when the same zip comes again).

    Returns:
        The folder, and ``(member, reason)`` for members that could not be unpacked (too large,
        damaged): the data check lists them with the unreadable images.

    Raises:
        DataSourceError: not a zip, an unsafe or oversized archive, or a member that cannot be read.
    """
    path = Path(archive)
    if not is_zip_path(path):
        raise DataSourceError(
            f"'{path.name}' is not a .zip file: zip the folder of training images (one sub-folder per class) "
            "and upload that."
        )
    checks = jobs_root / CHECKS_FOLDER
    _forget_old_checks(checks)
    target = checks / file_sha256(path)
    done = target / COMPLETE_FILE
    if done.is_file():
        return target, [tuple(row) for row in json.loads(done.read_text())]
    shutil.rmtree(target, ignore_errors=True)
    try:
        members = extract_zip(path, target, limits)
    except ArchiveError as error:
        shutil.rmtree(target, ignore_errors=True)  # nothing of a refused archive is kept
        raise DataSourceError(str(error)) from None
    if not members:
        shutil.rmtree(target, ignore_errors=True)
        raise DataSourceError(f"'{path.name}' holds no files; zip the folder of training images and upload that.")
    unreadable = [(member.name, member.error) for member in members if member.error]
    done.write_text(json.dumps(unreadable))
    return target, unreadable


def take_over(check_folder: Path, destination: Path) -> None:
    """Move a checked extraction into a job's folder (same file system: a rename)."""
    os.replace(check_folder, destination)
    (destination / COMPLETE_FILE).unlink(missing_ok=True)


def _forget_old_checks(checks: Path) -> None:
    """Delete check folders nobody started a job from within a day (uploads checked and abandoned)."""
    if not checks.is_dir():
        return
    cutoff = time.time() - _CHECK_FOLDERS_KEPT_SECONDS
    for folder in checks.iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def server_folders(data_root: str | os.PathLike | None, depth: int = 2) -> list[str]:
    """Folders under the data root (relative paths, ``depth`` levels deep) a user may train on."""
    if not data_root:
        return []
    root = Path(data_root)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_dir() and len(relative.parts) <= depth and not any(p.startswith(".") for p in relative.parts):
            found.append(relative.as_posix())
    return found


def server_folder(data_root: str | os.PathLike | None, name: str) -> Path:
    """``name`` under the data root, refusing anything that resolves outside it (``..``, absolute paths, links).

    Raises:
        DataSourceError: no data root configured, or ``name`` is outside it or not a folder.
    """
    if not data_root:
        raise DataSourceError(
            "No server data folder is configured: start the app with --train-data-root DIR to train on folders "
            "under DIR, or upload a zip."
        )
    root = Path(data_root).resolve()
    candidate = (root / (name or "")).resolve()
    if candidate != root and root not in candidate.parents:
        raise DataSourceError(f"'{name}' is outside the data folder {root}; pick one of the folders listed.")
    if not candidate.is_dir():
        raise DataSourceError(f"'{name}' is not a folder under {root}; pick one of the folders listed.")
    return candidate
