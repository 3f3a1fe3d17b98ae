"""Tests for common.image_io: every fixture is generated in tmp_path with PIL and NumPy."""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from common import image_io
from common.image_io import MAX_FILE_BYTES, MAX_PIXELS, ImageLoadError, load_image

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def _encode(image: Image.Image, image_format: str, **save_options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **save_options)
    return buffer.getvalue()


def _photo(size: tuple[int, int] = (32, 24)) -> Image.Image:
    """A noisy RGB image, so compressed files are long enough to cut in half meaningfully."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` but holds almost no pixel data.

    Decoding it would fail as truncated, so an error about the pixel count proves the check
    ran on the header alone.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _as_source(data: bytes, tmp_path: Path, kind: str) -> str | bytes:
    """Hands ``data`` to load_image either as a file path or as bytes."""
    if kind == "bytes":
        return data
    path = tmp_path / "upload.png"  # an extension that lies, as uploads often do
    path.write_bytes(data)
    return str(path)


def _pixels(image: Image.Image) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in pixel) for pixel in np.asarray(image).reshape(-1, 3)]


@pytest.fixture(params=["path", "bytes"])
def source_kind(request: pytest.FixtureRequest) -> str:
    return request.param


# --- the error type ---------------------------------------------------------------------------


def test_error_message_names_source_and_reason_and_survives_pickling():
    err = ImageLoadError("cat.jpg", "the file is empty (0 bytes); upload a photo")

    assert isinstance(err, ValueError)
    assert str(err) == "Cannot read image 'cat.jpg': the file is empty (0 bytes); upload a photo"
    assert (err.source, err.reason) == ("cat.jpg", "the file is empty (0 bytes); upload a photo")
    # Worker processes send exceptions back pickled; this is our own object, not user data.
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is ImageLoadError
    assert (str(copy), copy.source, copy.reason) == (str(err), err.source, err.reason)


def test_unsupported_source_type_is_a_type_error():
    with pytest.raises(TypeError, match="ndarray"):
        load_image(np.zeros((4, 4, 3), dtype=np.uint8))


# --- files that cannot be read ---------------------------------------------------------------


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.jpg"

    with pytest.raises(ImageLoadError) as info:
        load_image(path)

    assert info.value.source == str(path)
    assert "does not exist" in info.value.reason
    assert str(path) in str(info.value)


def test_directory_is_refused(tmp_path):
    with pytest.raises(ImageLoadError) as info:
        load_image(tmp_path)

    assert info.value.source == str(tmp_path)
    assert info.value.reason.startswith("it is a directory, not a file")


def test_empty_input_is_refused(tmp_path, source_kind):
    with pytest.raises(ImageLoadError) as info:
        load_image(_as_source(b"", tmp_path, source_kind))

    assert "empty (0 bytes)" in info.value.reason
    assert "upload a JPEG, PNG" in info.value.reason
    assert info.value.source == ("<bytes>" if source_kind == "bytes" else str(tmp_path / "upload.png"))


def test_oversized_file_is_refused_from_its_size_alone(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    with open(path, "wb") as file:
        file.truncate(3 * 1024 * 1024)  # sparse: instant to create

    def refuse_to_open(*args, **kwargs):
        raise AssertionError("the file was opened although os.stat already showed it is too large")

    # Shadows the builtin for image_io only, proving the check happens before reading.
    monkeypatch.setattr(image_io, "open", refuse_to_open, raising=False)
    with pytest.raises(ImageLoadError) as info:
        load_image(path, max_bytes=2 * 1024 * 1024)

    assert "3.0 MB, over the 2.0 MB limit" in info.value.reason


def test_oversized_bytes_are_refused():
    with pytest.raises(ImageLoadError, match=r"the file is 1\.5 MB, over the 1\.0 MB limit"):
        load_image(bytes(3 * 512 * 1024), max_bytes=1024 * 1024)


def test_byte_limit_is_inclusive():
    data = _encode(_photo(), "PNG")

    assert load_image(data, max_bytes=len(data)).size == (32, 24)
    with pytest.raises(ImageLoadError, match="over the"):
        load_image(data, max_bytes=len(data) - 1)


def test_default_byte_limit_is_25_mb():
    assert MAX_FILE_BYTES == 25 * 1024 * 1024
    with pytest.raises(ImageLoadError, match="25.1 MB, over the 25.0 MB limit"):
        load_image(bytes(MAX_FILE_BYTES + 1))


# --- decompression bombs --------------------------------------------------------------------


def test_pixel_limit_is_checked_on_the_header_before_decoding(tmp_path, source_kind):
    # 8000 x 6000 = 48 MP: over the default 40 MP limit, under Pillow's own 89 MP warning.
    with pytest.raises(ImageLoadError) as info:
        load_image(_as_source(_png_header(8000, 6000), tmp_path, source_kind))

    assert MAX_PIXELS == 40_000_000
    assert "8000 x 6000 = 48,000,000 pixels, over the 40,000,000-pixel limit" in info.value.reason


def test_pixel_limit_applies_to_pil_images():
    with pytest.raises(ImageLoadError, match="100 x 50 = 5,000 pixels, over the 4,999-pixel") as info:
        load_image(Image.new("RGB", (100, 50)), max_pixels=4_999)

    assert info.value.source == "<image>"
    assert load_image(Image.new("RGB", (100, 50)), max_pixels=5_000).size == (100, 50)


@pytest.mark.parametrize(
    ("width", "height", "pillow_raises"),
    [(10_000, 10_000, "DecompressionBombWarning"), (20_000, 20_000, "DecompressionBombError")],
)
def test_pillow_bomb_check_is_turned_into_image_load_error(width, height, pillow_raises):
    filters_before = list(warnings.filters)
    limit_before = Image.MAX_IMAGE_PIXELS

    # A max_pixels above Pillow's limit leaves Pillow's own check as the one that fires.
    with pytest.raises(ImageLoadError, match="decompression bomb") as info:
        load_image(_png_header(width, height), max_pixels=10**12)

    assert type(info.value.__cause__).__name__ == pillow_raises
    assert f"{width * height} pixels" in info.value.reason
    assert warnings.filters == filters_before
    assert Image.MAX_IMAGE_PIXELS == limit_before


# --- things that are not images ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        b'\xef\xbb\xbf\n  <?xml version="1.0" encoding="UTF-8"?>\n<!-- Inkscape -->\n<svg width="1"/>',
        b'\r\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "svg11.dtd">\n<SVG width="1"/>',
    ],
    ids=["bare", "bom-declaration-comment", "doctype-uppercase"],
)
def test_svg_gets_its_own_reason(tmp_path, source_kind, data):
    with pytest.raises(ImageLoadError) as info:
        load_image(_as_source(data, tmp_path, source_kind))

    assert info.value.reason == "SVG vector images are not supported; export it to PNG"


_UNPICKLED = []


def _record_unpickling() -> None:
    _UNPICKLED.append(True)


class _Tripwire:
    """Unpickling this calls _record_unpickling, so a test can tell if anything was unpickled."""

    def __reduce__(self):
        return _record_unpickling, ()


def _torch_style_zip() -> bytes:
    """The layout torch.save has written since PyTorch 1.6: a zip with <name>/data.pkl inside."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/data.pkl", pickle.dumps(_Tripwire(), protocol=2))
        archive.writestr("model/data/0", bytes(64))
        archive.writestr("model/version", b"3\n")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make_data",
    [
        lambda: pickle.dumps(_Tripwire(), protocol=2),
        lambda: pickle.dumps(_Tripwire(), protocol=5),
        lambda: pickle.dumps({"state_dict": list(range(10))}, protocol=4),
        _torch_style_zip,
    ],
    ids=["protocol-2", "protocol-5", "plain-dict", "torch-zip"],
)
def test_pickles_are_recognised_and_never_unpickled(tmp_path, source_kind, make_data):
    _UNPICKLED.clear()

    with pytest.raises(ImageLoadError) as info:
        load_image(_as_source(make_data(), tmp_path, source_kind))

    assert "looks like a Python pickle, not an image; it is never unpickled" in info.value.reason
    assert _UNPICKLED == []


def _zip_of_text() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        b"Just some notes, not an image.\n",
        np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b'<?xml version="1.0"?>\n<inventory><item/></inventory>',
        _zip_of_text(),
        b"\x80\x00 starts like a pickle but protocol 0 does not exist",
    ],
    ids=["text", "random-bytes", "non-svg-xml", "plain-zip", "0x80-not-pickle"],
)
def test_other_data_is_not_a_recognised_image_format(tmp_path, source_kind, data):
    with pytest.raises(ImageLoadError) as info:
        load_image(_as_source(data, tmp_path, source_kind))

    assert info.value.reason.startswith("it is not a recognised image format; upload a JPEG, PNG")


@pytest.mark.parametrize("image_format", ["PPM", "TGA", "ICO"])
def test_formats_outside_the_supported_list_are_not_decoded(image_format):
    # Pillow could decode these, but load_image only hands it SUPPORTED_FORMATS.
    data = _encode(_photo(), image_format)

    with pytest.raises(ImageLoadError, match="not a recognised image format"):
        load_image(data)


# --- truncated and corrupt images ------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # Pillow, on the cut-off TIFF
@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
@pytest.mark.parametrize("keep", ["first-half", "first-20-bytes"])
def test_truncated_image_is_reported_as_truncated_or_corrupt(tmp_path, source_kind, image_format, keep):
    data = _encode(_photo(), image_format)
    data = data[: len(data) // 2] if keep == "first-half" else data[:20]

    with pytest.raises(ImageLoadError) as info:
        load_image(_as_source(data, tmp_path, source_kind))

    assert "truncated or corrupt" in info.value.reason
    # Pillow's switch to pad truncated images with grey must stay off for everyone.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupted_png_data_is_reported_as_corrupt():
    data = bytearray(_encode(_photo(), "PNG"))
    data[60:80] = bytes(20)  # inside the compressed pixel data

    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(bytes(data))


# --- geometry and frames ---------------------------------------------------------------------


def test_exif_orientation_is_applied():
    # Stored 40 wide x 20 high, left half red and right half blue; Orientation 6 says
    # "rotate 90 degrees clockwise to display", which puts the left half on top.
    stored = Image.new("RGB", (40, 20), RED)
    stored.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(stored, "JPEG", exif=exif, quality=95)

    image = load_image(data)

    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[5, 10].astype(int), np.asarray(image)[35, 10].astype(int)
    assert np.abs(top - RED).max() <= 8
    assert np.abs(bottom - BLUE).max() <= 8


def _animation(image_format: str) -> bytes:
    frames = [Image.new("RGB", (8, 6), colour) for colour in (RED, GREEN, BLUE)]
    options = {"lossless": True} if image_format == "WEBP" else {}
    return _encode(frames[0], image_format, save_all=True, append_images=frames[1:], **options)


@pytest.mark.parametrize("image_format", ["GIF", "WEBP", "TIFF", "PNG"])
def test_multi_frame_files_give_their_first_frame(image_format):
    data = _animation(image_format)
    with Image.open(io.BytesIO(data)) as check:
        assert check.n_frames == 3  # the fixture really is multi-frame

    image = load_image(data)

    assert image.size == (8, 6)
    assert set(_pixels(image)) == {RED}


def test_pil_image_on_a_later_frame_gives_first_frame_and_is_left_on_its_frame():
    with Image.open(io.BytesIO(_animation("GIF"))) as animation:
        animation.seek(2)

        image = load_image(animation)

        assert set(_pixels(image)) == {RED}
        assert animation.tell() == 2


def test_pil_image_is_copied_not_modified():
    original = Image.new("RGBA", (2, 2), (0, 0, 255, 0))

    image = load_image(original)
    image.putpixel((0, 0), RED)

    assert image is not original
    assert original.mode == "RGBA"
    assert original.getpixel((0, 0)) == (0, 0, 255, 0)


def test_result_is_fully_loaded_and_holds_no_file_handle(tmp_path):
    path = tmp_path / "photo.png"
    _photo().save(path)
    expected = np.asarray(_photo())

    image = load_image(path)

    if os.path.isdir("/proc/self/fd"):
        open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
        assert str(path.resolve()) not in open_files
    path.unlink()
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), expected)


# --- colour modes ----------------------------------------------------------------------------


def _palette_image(transparent_index: int | None = None) -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *BLUE])
    image.putpixel((1, 0), 1)
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


def _from_rows(mode: str, pixels: list) -> Image.Image:
    image = Image.new(mode, (len(pixels), 1))
    for x, value in enumerate(pixels):
        image.putpixel((x, 0), value)
    return image


def _pa_image() -> Image.Image:
    image = _from_rows("PA", [(0, 255), (0, 0)])
    image.putpalette([*RED, *BLUE])
    return image


def _rgb_with_colour_key() -> Image.Image:
    image = _from_rows("RGB", [RED, BLUE])
    image.info["transparency"] = BLUE  # PNG tRNS for truecolour: this exact colour is transparent
    return image


# (id, builder, expected RGB pixels, tolerance, a format that stores the mode or None)
_MODE_CASES = [
    ("1", lambda: Image.fromarray(np.array([[False, True]])), [BLACK, WHITE], 0, "PNG"),
    ("L", lambda: _from_rows("L", [0, 200]), [BLACK, (200, 200, 200)], 0, "PNG"),
    ("P", _palette_image, [RED, BLUE], 0, "PNG"),
    ("P-transparency", lambda: _palette_image(transparent_index=1), [RED, WHITE], 0, "PNG"),
    (
        "RGBA",
        lambda: _from_rows("RGBA", [(255, 0, 0, 255), (0, 0, 255, 0), (0, 0, 0, 128)]),
        [RED, WHITE, (127, 127, 127)],
        1,
        "PNG",
    ),
    ("LA", lambda: _from_rows("LA", [(0, 255), (0, 0)]), [BLACK, WHITE], 0, "PNG"),
    ("PA", _pa_image, [RED, WHITE], 0, "TIFF"),
    ("RGB-colour-key", _rgb_with_colour_key, [RED, WHITE], 0, "PNG"),
    (
        "I;16",
        lambda: Image.fromarray(np.array([[0, 256 * 100, 256 * 100 + 255, 65535]], dtype=np.uint16)),
        [BLACK, (100, 100, 100), (100, 100, 100), WHITE],
        0,
        "PNG",
    ),
    (
        "I",
        lambda: Image.fromarray(np.array([[-1000, 0, 1000, 3000]], dtype=np.int32)),
        [BLACK, (64, 64, 64), (128, 128, 128), WHITE],  # (v + 1000) * 255 / 4000, rounded
        0,
        "TIFF",
    ),
    ("I-constant", lambda: Image.fromarray(np.full((1, 3), 7, dtype=np.int32)), [BLACK] * 3, 0, "TIFF"),
    (
        "F",
        lambda: Image.fromarray(np.array([[-1.0, 0.0, 3.0]], dtype=np.float32)),
        [BLACK, (64, 64, 64), WHITE],  # (v + 1) * 255 / 4 = 63.75 -> 64
        0,
        "TIFF",
    ),
    ("F-constant", lambda: Image.fromarray(np.full((1, 2), 0.5, dtype=np.float32)), [BLACK] * 2, 0, "TIFF"),
    (
        "F-non-finite",
        lambda: Image.fromarray(np.array([[np.nan, 0.0, 1.0, np.inf, -np.inf]], dtype=np.float32)),
        [BLACK, BLACK, WHITE, WHITE, BLACK],
        0,
        None,
    ),
    (
        "CMYK",
        lambda: _from_rows("CMYK", [(0, 0, 0, 0), (0, 255, 255, 0), (0, 0, 0, 255)]),
        [WHITE, RED, BLACK],
        0,
        "TIFF",
    ),
    ("YCbCr", lambda: _from_rows("YCbCr", [(255, 128, 128), (0, 128, 128)]), [WHITE, BLACK], 2, None),
    (
        "HSV",
        lambda: _from_rows("HSV", [(0, 255, 255), (85, 255, 255), (0, 0, 255)]),
        [RED, GREEN, WHITE],
        0,
        None,
    ),
    ("LAB", lambda: _from_rows("LAB", [(255, 128, 128), (0, 128, 128)]), [WHITE, BLACK], 3, "TIFF"),
]


@pytest.mark.filterwarnings("error")  # e.g. a 0 / 0 in the range scaling of a constant image
@pytest.mark.parametrize(
    ("build", "expected", "tolerance", "file_format"),
    [case[1:] for case in _MODE_CASES],
    ids=[case[0] for case in _MODE_CASES],
)
def test_every_mode_becomes_rgb_with_the_right_pixels(build, expected, tolerance, file_format):
    sources = {"image": build()}
    if file_format is not None:
        sources["file"] = _encode(build(), file_format)
        with Image.open(io.BytesIO(sources["file"])) as stored:
            assert stored.mode == sources["image"].mode  # the file really holds this mode

    for kind, source in sources.items():
        image = load_image(source)

        assert image.mode == "RGB", kind
        difference = np.abs(np.asarray(image, dtype=int).reshape(-1, 3) - np.array(expected))
        assert difference.max() <= tolerance, f"{kind}: got {_pixels(image)}, expected {expected}"


def test_mode_without_an_rgb_conversion_gets_a_clear_error():
    with pytest.raises(ImageLoadError, match="colour mode 'La' cannot be converted to RGB"):
        load_image(Image.new("La", (2, 2)))
