"""A content-addressed folder of images: each file is named by the SHA-256 of its bytes.

``<store>/<sha[:2]>/<sha>.<ext>``: the two-character fan-out keeps folders small (as git's object
store does), and the same upload stored twice is one file. Writes go to a temporary file in the
target folder and are renamed into place, so a crash or a concurrent writer never leaves a
half-written image under its final name.

>>> path = store_image("store", data, image_sha256(data))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

# Leading bytes -> file extension; anything else is stored as ".bin" (the log keeps what was
# decided on, whatever the file was).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def image_sha256(data: bytes) -> str:
    """The lowercase hex SHA-256 of ``data``: an image's name in the store and in the inspection log."""
    return hashlib.sha256(data).hexdigest()


def image_extension(data: bytes) -> str:
    """The file extension for ``data`` read from its first bytes (``"bin"`` when unrecognised)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for signature, extension in _SIGNATURES:
        if data.startswith(signature):
            return extension
    return "bin"


def stored_name(sha256: str, data: bytes) -> str:
    """``<sha[:2]>/<sha>.<ext>``: where ``data`` lives relative to the store's root."""
    return f"{sha256[:2]}/{sha256}.{image_extension(data)}"


def store_image(root: str | os.PathLike, data: bytes, sha256: str) -> Path:
    """Write ``data`` into the store at ``root`` (once) and return its path.

    Args:
        root: The store's folder; created when missing.
        data: The image file's bytes, as uploaded.
        sha256: Their SHA-256 as the caller computed it; it must match, so a row in the log
            never points at another image.

    Raises:
        ValueError: ``sha256`` is not a SHA-256 hex digest, or not the one of ``data``.
        OSError: the store cannot be written (its message names the path).
    """
    if not _SHA256.match(sha256 or ""):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    actual = image_sha256(data)
    if actual != sha256:
        raise ValueError(
            f"The image's bytes have SHA-256 {actual}, not the {sha256} given; "
            "hash the bytes that are stored (image_sha256(data))."
        )
    path = Path(root) / stored_name(sha256, data)
    if path.is_file() and path.stat().st_size == len(data):
        return path  # content-addressed: the same name means the same bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{sha256[:16]}-", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)  # atomic: readers see no file or the whole file
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
