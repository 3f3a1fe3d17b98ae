"""The one safe way to unpack a zip of images: every member checked before anything is written.

The Inspect tab, both command lines and training read uploaded batches through
:func:`extract_zip`, so the rules live in one place:

* The archive is refused (:class:`ArchiveError`, naming the member and the fix) when a member
  path is absolute, contains ``..``, would land outside the target folder (zip-slip) or is a
  symbolic link. Nothing is written before every member has passed.
* Zip bombs are refused from the headers first (number of members, total uncompressed bytes,
  compression ratio per member and overall) and again while reading, because headers can lie:
  bytes are counted as they are decompressed, and a member never yields more than its header
  declares.
* Directories, macOS resource forks (``__MACOSX/``) and hidden files (a path part starting
  with ``.``) are skipped.
* A member that cannot be read (bad CRC, unsupported compression, encrypted, too large for one
  image) becomes an :class:`ArchiveMember` with its reason, and the other members are read.
"""

from __future__ import annotations

import math
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from common.image_io import MAX_FILE_BYTES

_MEBIBYTE = 1024 * 1024
_CHUNK_BYTES = 1024 * 1024
# "C:foo" and "C:\foo" are absolute on Windows; a zip made there may carry them.
_DRIVE = re.compile(r"^[A-Za-z]:")
MACOS_RESOURCE_FORKS = "__MACOSX"


class ArchiveError(ValueError):
    """A zip archive that is refused as a whole: the message names the member (or the file) and the fix."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps for one archive, sized for batches of inspection images.

    Attributes:
        max_members: Entries in the archive (directories included), checked before reading.
        max_total_bytes: Uncompressed bytes of all members together, from the headers and while reading.
        max_member_bytes: Uncompressed bytes of one member; a larger one becomes an entry with
            its reason (it could not be loaded as an image anyway).
        max_ratio: Uncompressed over compressed size, per member and over the whole archive.
            Photos (JPEG, PNG) barely compress; a ratio of hundreds means mostly one repeated byte.
        ratio_grace_bytes: Members (and archives) smaller than this are not ratio-checked: a small
            blank BMP compresses a thousand-fold and is no bomb.
    """

    max_members: int = 5000
    max_total_bytes: int = 2 * 1024 * _MEBIBYTE
    max_member_bytes: int = MAX_FILE_BYTES
    max_ratio: float = 200.0
    ratio_grace_bytes: int = _MEBIBYTE

    def __post_init__(self):
        for name in ("max_members", "max_total_bytes", "max_member_bytes", "max_ratio"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ArchiveLimits.{name} must be positive, got {getattr(self, name)}")
        if self.ratio_grace_bytes < 0:
            raise ValueError(f"ArchiveLimits.ratio_grace_bytes must be 0 or more, got {self.ratio_grace_bytes}")


@dataclass(frozen=True)
class ArchiveMember:
    """One file of an archive: its path inside it, where it was extracted, or why it could not be.

    Attributes:
        name: The member's path inside the archive (``/``-separated, relative).
        path: The extracted file, under the target folder at the same relative path; None when
            it could not be read.
        error: Why it could not be read, and what to do; None when it was extracted.
    """

    name: str
    path: Path | None
    error: str | None = None


def is_zip_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a zip archive by its suffix (``.zip``, any case)."""
    return Path(path).suffix.lower() == ".zip"


def extract_zip(
    archive: str | os.PathLike, folder: str | os.PathLike, limits: ArchiveLimits | None = None
) -> list[ArchiveMember]:
    """Extract the files of a zip archive into ``folder`` (a temp dir), after checking every member.

    Args:
        archive: The zip file.
        folder: Where members go, at their relative paths; created if missing.
        limits: Caps on members, bytes and compression ratio (``ArchiveLimits()`` by default).

    Returns:
        One entry per file member in archive order (directories, ``__MACOSX/`` and hidden
        files left out), extracted or with the reason it could not be.

    Raises:
        ArchiveError: not a zip file, an unsafe member path or a symlink, too many members, or
            a zip bomb (by the headers or while reading). Members already written stay in
            ``folder``; the caller's temp dir holds them.

    Example:
        >>> [m.name for m in extract_zip("batch.zip", "/tmp/batch")]  # doctest: +SKIP
        ['parts/gear_0000.png', 'parts/nut_0001.png']
    """
    limits = limits or ArchiveLimits()
    label = Path(archive).name
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    try:
        with zipfile.ZipFile(archive) as opened:
            infos = opened.infolist()
            wanted = _checked_members(infos, label, root, limits)
            budget = [limits.max_total_bytes]  # uncompressed bytes still allowed, shared by all members
            return [_extract_member(opened, info, label, root, limits, budget) for info in wanted]
    except zipfile.BadZipFile as error:
        raise ArchiveError(
            f"'{label}' is not a readable zip archive ({error}); zip the images again and upload that file"
        ) from None
    except FileNotFoundError:
        raise ArchiveError(f"'{label}' does not exist; check the path") from None


def _checked_members(infos: list[zipfile.ZipInfo], label: str, root: Path, limits: ArchiveLimits):
    """The members to extract, after the checks on names and headers that refuse the whole archive."""
    if len(infos) > limits.max_members:
        raise ArchiveError(
            f"'{label}' has {len(infos):,} entries, over the limit of {limits.max_members:,}; "
            "split the images into several smaller archives"
        )
    for info in infos:
        _check_member_path(info, label, root)
    wanted = [info for info in infos if not _skipped(info)]
    total = sum(info.file_size for info in wanted)
    if total > limits.max_total_bytes:
        raise ArchiveError(
            f"'{label}' would unpack to {_megabytes(total)}, over the {_megabytes(limits.max_total_bytes)} limit "
            "for one archive; split the images into several smaller archives"
        )
    for info in wanted:
        if info.file_size > limits.ratio_grace_bytes and _ratio(info.file_size, info.compress_size) > limits.max_ratio:
            raise ArchiveError(_bomb_message(label, info.filename, _ratio(info.file_size, info.compress_size), limits))
    packed = sum(info.compress_size for info in wanted)
    if total > limits.ratio_grace_bytes and _ratio(total, packed) > limits.max_ratio:
        raise ArchiveError(
            f"'{label}' unpacks {_ratio(total, packed):.0f} times larger than it is ({_megabytes(total)}), over the "
            f"ratio limit of {limits.max_ratio:.0f}: it looks like a zip bomb. Zip the images themselves "
            "(JPEG or PNG files barely compress)"
        )
    return wanted


def _check_member_path(info: zipfile.ZipInfo, label: str, root: Path) -> None:
    """Refuse absolute paths, ``..``, anything resolving outside ``root``, and symbolic links."""
    name = info.filename
    fix = "zip the images from inside their folder (relative paths, no links) and upload that archive"
    parts = re.split(r"[\\/]", name)
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise ArchiveError(f"'{label}' has a member with an absolute path, '{name}'; {fix}")
    if ".." in parts:
        raise ArchiveError(f"'{label}' has a member whose path goes up a folder ('..'), '{name}'; {fix}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ArchiveError(f"'{label}' has a member that is a symbolic link, '{name}'; {fix}")
    target = (root / PurePosixPath(*[part for part in parts if part])).resolve()
    if target != root and root not in target.parents:
        raise ArchiveError(f"'{label}' has a member that would be written outside its folder, '{name}'; {fix}")


def _skipped(info: zipfile.ZipInfo) -> bool:
    """Directories, macOS resource forks and hidden files are not images."""
    parts = [part for part in info.filename.split("/") if part]
    return info.is_dir() or not parts or parts[0] == MACOS_RESOURCE_FORKS or any(p.startswith(".") for p in parts)


def _extract_member(
    opened: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, root: Path, limits: ArchiveLimits, budget: list[int]
) -> ArchiveMember:
    """Write one member, counting bytes as they come; an unreadable member gets its reason."""
    name = info.filename
    if info.file_size > limits.max_member_bytes:
        return ArchiveMember(
            name,
            None,
            f"it is {_megabytes(info.file_size)} unpacked, over the {_megabytes(limits.max_member_bytes)} limit "
            "for one image; resize it or save it as JPEG",
        )
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with opened.open(info) as source, open(target, "xb") as sink:
            while chunk := source.read(_CHUNK_BYTES):
                written += len(chunk)
                # Counted on what was decompressed, not on what the headers said.
                if written > info.file_size:
                    raise ArchiveError(
                        f"'{label}': member '{name}' holds more than the {info.file_size:,} bytes its header "
                        "declares, so the archive's headers lie; refusing it. Zip the images again"
                    )
                if written > budget[0]:
                    raise ArchiveError(
                        f"'{label}' unpacks to more than {_megabytes(limits.max_total_bytes)} (reached in member "
                        f"'{name}'); split the images into several smaller archives"
                    )
                if written > limits.ratio_grace_bytes and _ratio(written, info.compress_size) > limits.max_ratio:
                    raise ArchiveError(_bomb_message(label, name, _ratio(written, info.compress_size), limits))
                sink.write(chunk)
    except FileExistsError:
        return ArchiveMember(name, None, "the archive holds two members with this path; only the first is read")
    except ArchiveError:
        target.unlink(missing_ok=True)
        raise
    except zipfile.BadZipFile as error:  # Python's zipfile reports a bad CRC-32 this way
        return _unreadable(target, name, f"its data is corrupt ({error}); zip the image again")
    except (zlib.error, EOFError) as error:
        return _unreadable(target, name, f"its compressed data is truncated or corrupt ({error}); zip the image again")
    except NotImplementedError as error:  # e.g. an old "implode" or an unusual method
        return _unreadable(target, name, f"its compression method is not supported ({error}); zip it with deflate")
    except RuntimeError as error:  # zipfile: "File ... is encrypted, password required for extraction"
        return _unreadable(target, name, f"it cannot be unpacked ({error}); zip it without a password")
    budget[0] -= written
    return ArchiveMember(name, target)


def _unreadable(target: Path, name: str, reason: str) -> ArchiveMember:
    target.unlink(missing_ok=True)
    return ArchiveMember(name, None, reason)


def _ratio(uncompressed: int, compressed: int) -> float:
    return uncompressed / compressed if compressed else math.inf


def _bomb_message(label: str, name: str, ratio: float, limits: ArchiveLimits) -> str:
    return (
        f"'{label}': member '{name}' unpacks {ratio:.0f} times larger than it is stored, over the ratio limit of "
        f"{limits.max_ratio:.0f}: it looks like a zip bomb. Zip the images themselves (JPEG or PNG files barely "
        "compress)"
    )


def _megabytes(size: int) -> str:
    return f"{size / _MEBIBYTE:.1f} MB"
