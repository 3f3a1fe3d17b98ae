"""The one safe way to turn a file, some bytes or a PIL image into an RGB ``PIL.Image``.

Inference pipelines, training and the web app all read images through :func:`load_image`,
so the rules live in one place:

* Limits come before decoding: the byte size from ``os.stat`` before the file is read, the
  pixel count from the header (``Image.open`` is lazy) before any pixel is decoded.
* Only the formats in ``SUPPORTED_FORMATS`` are decoded.
* Anything unreadable raises :class:`ImageLoadError`, whose message says what is wrong and
  what to do. Common wrong uploads (SVG drawings, pickles and PyTorch checkpoints) are named,
  and a pickle is only recognised by its structure: it is never unpickled.
* The result is always a fully loaded RGB image of the first frame, with the EXIF
  orientation applied and any transparency composited on white.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import warnings
import zipfile
from functools import cache

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_FILE_BYTES: int = 25 * 1024 * 1024
MAX_PIXELS: int = 40_000_000

# Pillow's default is to try every registered plugin. Some of them (TGA, IM, SPIDER) have no
# magic number to check, and EPS shells out to Ghostscript, so we hand Pillow only the formats
# we promise users: fewer rarely exercised decoders see untrusted uploads.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

_UPLOAD_ADVICE = "upload a JPEG, PNG, WebP, BMP, GIF or TIFF photo"
_MEBIBYTE = 1024 * 1024  # MAX_FILE_BYTES is 25 * 1024 * 1024, so "MB" in messages means this.

# Pillow reports corrupt data as more than the documented OSError. Fuzzing truncated and
# bit-flipped files gave SyntaxError (PNG chunk reader), ValueError (APNG frame control) and
# TypeError (a TIFF with a garbled strip offset); seeking a broken GIF, PNG or TIFF frame raises
# EOFError, and the header parsers can raise IndexError, KeyError or struct.error. Each try
# below wraps a single Pillow call and none of our code, so this cannot hide a bug of ours.
_CORRUPT_DATA_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
)

# The pickle PROTO opcode (b"\x80" + protocol number) opens every pickle of protocol 2 to 5,
# which covers torch.save's legacy format and anything pickle.dump writes by default.
_PICKLE_PROTOCOLS = range(2, 6)

# The first bytes of the supported formats. Pillow reports a file cut off inside its header as
# "cannot identify image file", which would wrongly tell the user the format is unknown.
_IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)

# How far into the data to look for the <svg> root after an XML declaration or comment.
_SVG_SNIFF_BYTES = 4096

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class ImageLoadError(ValueError):
    """One user-facing error type for every unreadable image.

    Attributes:
        source: The file path as given, or ``'<bytes>'`` / ``'<image>'`` for in-memory input.
        reason: What is wrong and what to do about it.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"Cannot read image '{source}': {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageLoadError], tuple[str, str]]:
        # The default would call ImageLoadError(message) and fail, so errors raised in worker
        # processes (multiprocessing, concurrent.futures) could not be sent back.
        return type(self), (self.source, self.reason)


def load_image(
    source: str | os.PathLike[str] | bytes | bytearray | Image.Image,
    *,
    max_bytes: int = MAX_FILE_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Loads an image as a fully decoded RGB ``PIL.Image``, refusing anything unsafe or unreadable.

    Args:
        source: A path to an image file, the bytes of one, or an already-open PIL image.
        max_bytes: Largest accepted file or byte-string size. Not applied to PIL images.
        max_pixels: Largest accepted ``width * height``, checked before decoding. Pillow's own
            decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) still applies above it.

    Returns:
        A new RGB image of the first frame with the EXIF orientation applied and
        transparency composited on white. It holds no file handle, and a PIL image passed in
        is left as it was.

    Raises:
        ImageLoadError: If the source is missing, too large, not a supported image, or corrupt.
        TypeError: If ``source`` is none of the accepted types.

    Example:
        >>> load_image("photo.jpg").mode  # doctest: +SKIP
        'RGB'
    """
    source_name = _describe_source(source)
    try:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that, and a warning would let a
        # huge image through when max_pixels is set above Pillow's limit. Raising it inside a
        # local catch_warnings leaves Pillow's global MAX_IMAGE_PIXELS and every other caller's
        # warning filters alone. catch_warnings swaps process-wide state and is not thread-safe
        # before Python 3.14; that is acceptable because this filter is only a backstop: the
        # max_pixels check below needs no warnings machinery.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, Image.Image):
                return _convert_given_image(source, max_pixels)
            if isinstance(source, (bytes, bytearray)):
                return _decode_bytes(source, source_name, max_bytes, max_pixels)
            return _decode_bytes(_read_file(source_name, max_bytes), source_name, max_bytes, max_pixels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(
            source_name,
            f"Pillow refused it as a possible decompression bomb ({err}); resize it to fewer pixels",
        ) from err


def _describe_source(source: object) -> str:
    """Returns the name errors use for ``source``, refusing types ``load_image`` does not take."""
    if isinstance(source, Image.Image):
        return "<image>"
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    raise TypeError(
        f"load_image() takes a path, bytes or a PIL.Image.Image, not {type(source).__name__}; "
        "read file objects with .read() and convert arrays with PIL.Image.fromarray() first"
    )


def _read_file(path: str, max_bytes: int) -> bytes:
    """Reads a whole image file after checking, from ``os.stat`` alone, that it is worth reading."""
    try:
        file_stat = os.stat(path)
    except FileNotFoundError:
        raise ImageLoadError(path, "the file does not exist; check the path and file name") from None
    except OSError as err:
        reason = f"the file cannot be accessed ({err.strerror}); check its permissions"
        raise ImageLoadError(path, reason) from err
    if stat.S_ISDIR(file_stat.st_mode):
        raise ImageLoadError(path, "it is a directory, not a file; pass the path of one image file")
    if not stat.S_ISREG(file_stat.st_mode):
        # A FIFO or a device such as /dev/zero reports size 0 and may never end.
        raise ImageLoadError(path, "it is not a regular file; pass the path of one image file")
    _check_byte_size(file_stat.st_size, path, max_bytes)
    try:
        with open(path, "rb") as file:
            # One byte over the limit is enough to notice a file that grew after os.stat.
            return file.read(max_bytes + 1)
    except OSError as err:
        reason = f"the file cannot be read ({err.strerror}); check its permissions"
        raise ImageLoadError(path, reason) from err


def _check_byte_size(size: int, source: str, max_bytes: int) -> None:
    """Refuses empty data and data over ``max_bytes``."""
    if size == 0:
        raise ImageLoadError(source, f"the file is empty (0 bytes); {_UPLOAD_ADVICE}")
    if size > max_bytes:
        # Rounded up, so a file just over the limit never reads as equal to it.
        size_mb = math.ceil(size / _MEBIBYTE * 10) / 10
        raise ImageLoadError(
            source,
            f"the file is {size_mb:.1f} MB, over the {max_bytes / _MEBIBYTE:.1f} MB limit; "
            "upload a smaller image (resize it or save it as JPEG)",
        )


def _decode_bytes(data: bytes | bytearray, source: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """Checks, sniffs and decodes the bytes of one image file."""
    _check_byte_size(len(data), source, max_bytes)
    try:
        opened = Image.open(io.BytesIO(data), formats=_available_formats())
    except UnidentifiedImageError:
        raise ImageLoadError(source, _explain_unidentified(data)) from None
    except _CORRUPT_DATA_ERRORS as err:
        raise ImageLoadError(source, _corrupt_reason(err)) from err
    with opened as image:
        return _first_frame_as_rgb(image, source, max_pixels, owned=True)


@cache
def _available_formats() -> tuple[str, ...]:
    """Returns the supported formats this Pillow build can open.

    ``Image.open(formats=...)`` raises KeyError for a name with no registered opener, which a
    Pillow built without libwebp would do for every image, not only WebP ones.
    """
    Image.init()
    return tuple(name for name in SUPPORTED_FORMATS if name in Image.OPEN)


def _convert_given_image(image: Image.Image, max_pixels: int) -> Image.Image:
    """Converts a caller's PIL image, then puts it back on the frame it was showing."""
    frame = image.tell()
    try:
        return _first_frame_as_rgb(image, "<image>", max_pixels, owned=False)
    finally:
        if frame != 0:
            image.seek(frame)


def _first_frame_as_rgb(image: Image.Image, source: str, max_pixels: int, *, owned: bool) -> Image.Image:
    """Decodes the first frame of ``image`` after the pixel check and returns it as RGB.

    Args:
        image: An opened, possibly not yet decoded, image.
        source: The name to use in errors.
        max_pixels: Largest accepted ``width * height``.
        owned: Whether ``image`` may be modified, which saves one full-size copy.
    """
    try:
        if image.tell() != 0:
            image.seek(0)
    except _CORRUPT_DATA_ERRORS as err:
        raise ImageLoadError(source, _corrupt_reason(err)) from err
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(
            source,
            f"the image is {width} x {height} = {width * height:,} pixels, over the {max_pixels:,}-pixel "
            "limit; resize it to fewer pixels",
        )
    try:
        image.load()
    except _CORRUPT_DATA_ERRORS as err:
        raise ImageLoadError(source, _corrupt_reason(err)) from err
    if owned:
        ImageOps.exif_transpose(image, in_place=True)
    else:
        image = ImageOps.exif_transpose(image)
    return _to_rgb(image, source)


def _corrupt_reason(detail: object) -> str:
    return f"the image data is truncated or corrupt ({detail}); export or upload the file again"


def _to_rgb(image: Image.Image, source: str) -> Image.Image:
    """Converts a decoded image of any PIL mode to a new 8-bit RGB image."""
    mode = image.mode
    # High-bit-depth greyscale is handled first: Pillow's own convert() clips it to 0..255,
    # which turns most 16-bit images white and most 0..1 float images black. A transparent
    # colour key on such an image (rare: a 16-bit PNG with tRNS) is ignored.
    if mode.startswith("I;16"):
        # The top 8 of 16 bits, as a 16-bit sensor image would be displayed.
        return _grey_to_rgb((np.asarray(image) >> 8).astype(np.uint8))
    if mode in ("I", "F"):
        # No fixed range exists for 32-bit integer or float data, so use the image's own.
        return _grey_to_rgb(_stretch_to_uint8(np.asarray(image)))
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            return _composite_on_white(image)
        # Covers 1, L, P, RGB, RGBX, CMYK, YCbCr, HSV and LAB.
        return image.convert("RGB")
    except ValueError as err:
        raise ImageLoadError(
            source,
            f"its colour mode {mode!r} cannot be converted to RGB; save it as an 8-bit RGB PNG or JPEG",
        ) from err


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Flattens alpha or a transparent palette entry / colour key onto a white background."""
    # convert("RGBA") applies info["transparency"] for P, L and RGB images and un-premultiplies
    # RGBa; converting P straight to RGB would drop the transparency with a warning.
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Maps the finite range of ``values`` linearly onto 0..255; NaN becomes 0."""
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    if low == high:
        # A constant image has no contrast to show, and dividing by its zero range would give NaN.
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = np.clip((values - low) * (255.0 / (high - low)), 0.0, 255.0)
    return np.rint(np.nan_to_num(scaled, nan=0.0)).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(grey).convert("RGB")


def _explain_unidentified(data: bytes | bytearray) -> str:
    """Says what some bytes that Pillow could not identify probably are, and what to do."""
    if _looks_like_svg(data):
        return "SVG vector images are not supported; export it to PNG"
    if _looks_like_pickle(data):
        return f"it looks like a Python pickle, not an image; it is never unpickled; {_UPLOAD_ADVICE}"
    if data.startswith(_IMAGE_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return _corrupt_reason("its header cannot be parsed")
    return f"it is not a recognised image format; {_UPLOAD_ADVICE}"


def _looks_like_svg(data: bytes | bytearray) -> bool:
    head = bytes(data[:_SVG_SNIFF_BYTES]).lstrip().removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if head.startswith(b"<svg"):
        return True
    # An XML declaration, doctype or comment may come first; other XML is not an SVG.
    return head.startswith((b"<?xml", b"<!doctype", b"<!--")) and b"<svg" in head


def _looks_like_pickle(data: bytes | bytearray) -> bool:
    """Recognises a pickle or a PyTorch zip checkpoint from its structure, without unpickling."""
    if len(data) >= 2 and data[0] == 0x80 and data[1] in _PICKLE_PROTOCOLS:
        return True
    if not data.startswith(b"PK\x03\x04"):
        return False
    try:
        # Reads only the zip's table of contents; no member is extracted.
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    # torch.save writes "<archive name>/data.pkl" next to the raw tensor storages.
    return any(name.rsplit("/", 1)[-1] == "data.pkl" for name in names)
