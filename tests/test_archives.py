"""The safe zip reader: unsafe paths, links and zip bombs refused; unreadable members reported, not fatal."""

from __future__ import annotations

import io
import stat
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

from common import archives
from common.archives import ArchiveError, ArchiveLimits, extract_zip, is_zip_path
from tests.conftest import noise_png_bytes, write_zip


def test_members_are_extracted_at_their_relative_paths_and_junk_is_skipped(tmp_path):
    batch = write_zip(
        tmp_path / "batch.zip",
        {
            "top.png": noise_png_bytes(0),
            "parts/gears/g1.png": noise_png_bytes(1),
            "parts/nuts/n1.png": noise_png_bytes(2),
            "parts/": b"",  # a directory entry
            "__MACOSX/parts/._g1.png": b"resource fork",
            ".DS_Store": b"finder",
            "parts/.hidden/x.png": noise_png_bytes(3),
        },
    )
    out = tmp_path / "out"
    members = extract_zip(batch, out)
    assert [m.name for m in members] == ["top.png", "parts/gears/g1.png", "parts/nuts/n1.png"]
    assert all(m.error is None for m in members)
    assert [m.path for m in members] == [out.resolve() / m.name for m in members]
    assert (out / "parts" / "gears" / "g1.png").read_bytes() == noise_png_bytes(1)
    assert not (out / "__MACOSX").exists() and not (out / ".DS_Store").exists()
    assert is_zip_path("x/BATCH.ZIP") and not is_zip_path("x/batch.png")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("../evil.png", "goes up a folder"),
        ("good/../../evil.png", "goes up a folder"),
        ("..\\evil.png", "goes up a folder"),
        ("/etc/evil.png", "absolute path"),
        ("C:\\evil.png", "absolute path"),
    ],
)
def test_zip_slip_refuses_the_archive_before_writing_anything(tmp_path, name, words):
    batch = write_zip(tmp_path / "slip.zip", {"fine.png": noise_png_bytes(), name: noise_png_bytes(1)})
    out = tmp_path / "out"
    with pytest.raises(ArchiveError) as error:
        extract_zip(batch, out)
    message = str(error.value)
    assert words in message and name in message and "'slip.zip'" in message
    assert "relative paths" in message  # the fix
    assert list(out.iterdir()) == []  # not even the safe member was written
    assert not (tmp_path / "evil.png").exists()


def test_a_symlink_member_is_refused(tmp_path):
    link = zipfile.ZipInfo("photo.png")
    link.create_system = 3  # Unix, so the mode bits count
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    batch = tmp_path / "links.zip"
    with zipfile.ZipFile(batch, "w") as archive:
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link, 'photo.png'"):
        extract_zip(batch, tmp_path / "out")
    assert not (tmp_path / "out" / "photo.png").exists()


def test_too_many_members(tmp_path):
    batch = write_zip(tmp_path / "many.zip", {f"{i}.png": noise_png_bytes(i, (8, 8)) for i in range(4)})
    with pytest.raises(ArchiveError, match="has 4 entries, over the limit of 3; split"):
        extract_zip(batch, tmp_path / "out", ArchiveLimits(max_members=3))
    assert len(extract_zip(batch, tmp_path / "ok", ArchiveLimits(max_members=4))) == 4


def test_a_bomb_by_total_bytes_is_refused_from_the_headers(tmp_path):
    batch = write_zip(
        tmp_path / "big.zip", {f"{i}.bin": bytes(np.random.default_rng(i).bytes(600_000)) for i in range(4)}
    )
    with pytest.raises(ArchiveError, match=r"would unpack to 2\.3 MB, over the 2\.0 MB limit"):
        extract_zip(batch, tmp_path / "out", ArchiveLimits(max_total_bytes=2 * 1024 * 1024))
    assert list((tmp_path / "out").iterdir()) == []


def test_a_bomb_by_compression_ratio_is_refused_with_the_default_limits(tmp_path):
    batch = write_zip(tmp_path / "bomb.zip", {"ok.png": noise_png_bytes(), "zeros.bmp": bytes(20 * 1024 * 1024)})
    assert zipfile.ZipFile(batch).getinfo("zeros.bmp").compress_size < 100_000  # ratio about 1000
    with pytest.raises(ArchiveError, match="member 'zeros.bmp' unpacks [0-9]+ times larger .* zip bomb"):
        extract_zip(batch, tmp_path / "out")


def test_the_overall_ratio_is_capped_too(tmp_path):
    # Each member is under the grace size, so only the whole archive's ratio can catch them.
    batch = write_zip(tmp_path / "many-bombs.zip", {f"{i}.bmp": bytes(900_000) for i in range(20)})
    with pytest.raises(ArchiveError, match="'many-bombs.zip' unpacks [0-9]+ times larger than it is"):
        extract_zip(batch, tmp_path / "out")


def test_a_small_blank_image_is_no_bomb(tmp_path):
    blank = io.BytesIO()
    Image.new("RGB", (300, 300), "white").save(blank, format="BMP")  # 270 kB, compresses about 300-fold
    members = extract_zip(write_zip(tmp_path / "blank.zip", {"blank.bmp": blank.getvalue()}), tmp_path / "out")
    assert members[0].error is None and members[0].path.stat().st_size == len(blank.getvalue())


def _lie_about_size(path, name: str, declared: int) -> None:
    """Rewrite the uncompressed size of ``name`` in both its local and its central header."""
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo(name)
    struct.pack_into("<I", data, info.header_offset + 22, declared)  # local file header
    central = data.rindex(b"PK\x01\x02")  # the only (last) member's central directory entry
    struct.pack_into("<I", data, central + 24, declared)
    path.write_bytes(bytes(data))


def test_a_lying_header_never_yields_more_than_it_declares(tmp_path):
    batch = write_zip(tmp_path / "liar.zip", {"ok.png": noise_png_bytes(), "liar.bmp": bytes(50 * 1024 * 1024)})
    _lie_about_size(batch, "liar.bmp", 1000)  # 50 MB of zeros declared as 1 kB: passes every header check
    assert zipfile.ZipFile(batch).getinfo("liar.bmp").file_size == 1000
    ok, liar = extract_zip(batch, tmp_path / "out")
    assert ok.error is None
    assert liar.path is None and "corrupt" in liar.error and "CRC" in liar.error
    written = sum(f.stat().st_size for f in (tmp_path / "out").rglob("*") if f.is_file())
    assert written == len(noise_png_bytes())  # nothing of the lying member is left on disk


def test_bytes_are_counted_while_reading_whatever_the_reader_returns(tmp_path, monkeypatch):
    """Our own count stops a member that yields more than its header says, whichever zip reader is used."""
    batch = write_zip(tmp_path / "liar.zip", {"liar.png": noise_png_bytes()})
    monkeypatch.setattr(archives.zipfile.ZipFile, "open", lambda self, info: io.BytesIO(bytes(10 * 1024 * 1024)))
    with pytest.raises(ArchiveError, match="holds more than the [0-9,]+ bytes its header declares"):
        extract_zip(batch, tmp_path / "out")
    assert not (tmp_path / "out" / "liar.png").exists()


def test_a_corrupt_member_becomes_an_entry_with_its_reason_and_the_others_are_read(tmp_path):
    members = {"a.png": noise_png_bytes(0), "b.png": noise_png_bytes(1), "c.png": noise_png_bytes(2)}
    batch = write_zip(tmp_path / "batch.zip", members, compression=zipfile.ZIP_STORED)
    data = bytearray(batch.read_bytes())
    info = zipfile.ZipFile(batch).getinfo("b.png")
    data[info.header_offset + 30 + len("b.png") + 100] ^= 0xFF  # a byte inside b.png's stored data
    batch.write_bytes(bytes(data))
    a, b, c = extract_zip(batch, tmp_path / "out")
    assert (a.error, c.error) == (None, None)
    assert a.path.read_bytes() == members["a.png"] and c.path.read_bytes() == members["c.png"]
    assert b.name == "b.png" and b.path is None
    assert b.error.startswith("its data is corrupt (Bad CRC-32") and "zip the image again" in b.error
    assert not (tmp_path / "out" / "b.png").exists()


def test_an_unsupported_compression_method_is_a_row_not_a_stop(tmp_path):
    batch = write_zip(tmp_path / "batch.zip", {"a.png": noise_png_bytes(0), "b.png": noise_png_bytes(1)})
    data = bytearray(batch.read_bytes())
    info = zipfile.ZipFile(batch).getinfo("b.png")
    # Compression method 6 ("implode", PKZIP 1) in both headers: Python's zipfile cannot read it.
    struct.pack_into("<H", data, info.header_offset + 8, 6)
    struct.pack_into("<H", data, data.rindex(b"PK\x01\x02") + 10, 6)
    batch.write_bytes(bytes(data))
    a, b = extract_zip(batch, tmp_path / "out")
    assert a.error is None and b.path is None and "compression method" in b.error


def test_an_oversized_member_is_a_row_with_the_limit(tmp_path):
    noise = np.random.default_rng(0).bytes(300_000)
    a, big = extract_zip(
        write_zip(tmp_path / "b.zip", {"a.png": noise_png_bytes(), "big.png": noise}),
        tmp_path / "out",
        ArchiveLimits(max_member_bytes=200_000),
    )
    assert a.error is None and big.path is None and "over the 0.2 MB limit for one image" in big.error


def test_not_a_zip_file(tmp_path):
    fake = tmp_path / "photos.zip"
    fake.write_text("these are not the photos")
    with pytest.raises(ArchiveError, match="'photos.zip' is not a readable zip archive .*zip the images again"):
        extract_zip(fake, tmp_path / "out")


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_ratio must be positive"):
        ArchiveLimits(max_ratio=0)
