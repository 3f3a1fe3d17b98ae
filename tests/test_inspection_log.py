"""The inspection log on SQLite and PostgreSQL, and the content-addressed image store."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from common.image_store import image_extension, image_sha256, store_image
from common.inspection_log import (
    SCHEMA_VERSION,
    Decision,
    InspectionLog,
    InspectionLogError,
    default_url,
)


def png_bytes(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decision(image: bytes = b"image", **fields) -> Decision:
    values = {
        "task": "classify",
        "channel": "classify",
        "image_sha256": hashlib.sha256(image).hexdigest(),
        "model_source": "default",
        "answer": "tabby",
        "confidence": 0.9,
        "scores": {"tabby": 0.9, "tiger cat": 0.05},
    }
    values.update(fields)
    return Decision(**values)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe is closed


def test_sixteen_concurrent_writes_give_sixteen_rows(open_log):
    # Two logs on one database, as two server processes would be; all 16 writers start together.
    logs = [open_log(), open_log()]
    start = threading.Barrier(16)
    ids, errors = [], []

    def write(index):
        start.wait()
        try:
            ids.append(logs[index % 2].record(decision(file_name=f"{index}.png")))
        except Exception as error:  # noqa: BLE001 (the assertion below reports any failure)
            errors.append(error)

    threads = [threading.Thread(target=write, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(ids)) == 16
    rows = logs[0].list(limit=100)
    assert sorted(row.id for row in rows) == sorted(ids)
    assert sorted(row.file_name for row in rows) == sorted(f"{index}.png" for index in range(16))


def test_processes_starting_together_create_the_schema_once(open_log):
    # Six servers starting at once on an empty database: each finds no tables, only one may create them.
    start = threading.Barrier(6)
    logs, errors = [], []

    def open_together():
        start.wait()
        try:
            logs.append(open_log())
        except Exception as error:  # noqa: BLE001 (the assertion below reports any failure)
            errors.append(error)

    threads = [threading.Thread(target=open_together) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(logs) == 6
    with logs[0].engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM schema_version")).scalar() == 1


def test_a_decision_reads_back_as_recorded(open_log):
    log = open_log()
    assert log.schema_version() == SCHEMA_VERSION
    recorded = decision(
        file_name="cat.jpg",
        model_fingerprint="ab" * 32,
        thresholds={"low_confidence": 0.5, "rejection": {"method": "max_softmax", "threshold": 0.3}},
        unknown=True,
        flags=("unknown", "low_confidence"),
        confidence=0.25,
    )
    before = datetime.now(UTC)
    inspection = log.get(log.record(recorded))
    assert before <= inspection.created_at <= datetime.now(UTC)
    assert inspection.created_at.tzinfo is not None
    for name in ("task", "channel", "image_sha256", "file_name", "model_source", "model_fingerprint"):
        assert getattr(inspection, name) == getattr(recorded, name)
    assert inspection.thresholds == recorded.thresholds and inspection.scores == recorded.scores
    assert inspection.answer == "tabby" and inspection.confidence == pytest.approx(0.25)
    assert inspection.unknown and inspection.defective is None
    assert inspection.flags == ("unknown", "low_confidence")
    assert not inspection.image_stored and inspection.review is None
    assert log.get(inspection.id + 1000) is None


def test_list_filters_and_newest_first(open_log):
    log = open_log()
    first = log.record(decision(flags=("low_confidence",), confidence=0.3))
    time.sleep(0.02)
    middle = datetime.now(UTC)
    time.sleep(0.02)
    second = log.record(
        decision(task="segment", channel="api", model_source="models/steel-segformer", answer="clean", defective=False)
    )
    third = log.record(
        decision(
            task="segment",
            model_source="models/steel-segformer",
            answer="defective: scratches",
            defective=True,
            flags=("defective", "disagree"),
        )
    )
    assert [row.id for row in log.list()] == [third, second, first]
    assert [row.id for row in log.list(limit=1, offset=1)] == [second]
    assert [row.id for row in log.list(task="segment")] == [third, second]
    assert [row.id for row in log.list(model="default")] == [first]
    assert [row.id for row in log.list(flag="low_confidence")] == [first]
    assert [row.id for row in log.list(flag="disagree")] == [third]
    assert [row.id for row in log.list(flag="unknown")] == []
    assert [row.id for row in log.list(since=middle)] == [third, second]
    # A naive time is UTC.
    assert [row.id for row in log.list(until=middle.replace(tzinfo=None))] == [first]
    assert log.models() == ["default", "models/steel-segformer"]
    with pytest.raises(ValueError, match="flag 'shiny' is not one of"):
        log.list(flag="shiny")


def test_flag_filter_is_exact(open_log):
    # "_" is a LIKE wildcard: low_confidence must not match a flag list that only looks like it.
    log = open_log()
    log.record(decision(flags=("unknown",)))
    both = log.record(decision(flags=("unknown", "low_confidence", "disagree")))
    assert [row.id for row in log.list(flag="low_confidence")] == [both]
    assert len(log.list(flag="unknown")) == 2


def test_reviews_are_stored_and_leave_the_queue(open_log):
    log = open_log()
    unflagged = log.record(decision())
    older = log.record(decision(flags=("low_confidence",), confidence=0.3))
    newer = log.record(decision(answer="gear", flags=("unknown",), unknown=True))
    assert [row.id for row in log.queue()] == [older, newer]  # oldest first
    assert log.queue_size() == 2

    review = log.review(older, None, "  Ann ", accepted=True)
    assert (review.label, review.accepted, review.reviewer) == ("tabby", True, "Ann")
    assert [row.id for row in log.queue()] == [newer]
    stored = log.get(older).review
    assert stored.label == "tabby" and stored.accepted and stored.created_at.tzinfo is not None

    # A second review replaces the first as the verdict.
    log.review(older, "tiger cat", "Bob", accepted=False)
    assert (log.get(older).review.label, log.get(older).review.reviewer) == ("tiger cat", "Bob")
    assert [row.id for row in log.reviewed()] == [older]

    # Accepting "unknown" means none of the classes: no label.
    assert log.review(newer, None, "Ann", accepted=True).label is None
    assert log.queue() == [] and log.queue_size() == 0
    assert log.get(unflagged).review is None


def test_review_refusals_say_what_is_missing(open_log):
    log = open_log()
    flagged = log.record(decision(flags=("low_confidence",)))
    with pytest.raises(ValueError, match="reviewer's name"):
        log.review(flagged, None, " ", accepted=True)
    with pytest.raises(ValueError, match="needs a label"):
        log.review(flagged, "", "Ann", accepted=False)
    with pytest.raises(ValueError, match="no inspection #999"):
        log.review(999, "cat", "Ann", accepted=False)
    assert log.queue_size() == 1


def test_images_are_stored_only_when_asked(open_log, tmp_path):
    image = png_bytes()
    kept = open_log(store_images=True)
    row = kept.get(kept.record(decision(image), image))
    assert row.image_stored and row.image_file.endswith(".png")
    path = kept.image_path(row.id)
    assert path.read_bytes() == image and path.parent.parent == tmp_path / "store"

    not_kept = open_log()
    other = not_kept.get(not_kept.record(decision(png_bytes(1)), png_bytes(1)))
    assert not other.image_stored and not_kept.image_path(other.id) is None

    with pytest.raises(ValueError, match="SHA-256"):
        kept.record(decision(b"something else"), image)


def test_a_log_that_cannot_be_written_fails_loudly(open_log):
    log = open_log()
    log.record(decision())
    with log.engine.begin() as connection:
        connection.execute(text("DROP TABLE reviews"))
        connection.execute(text("DROP TABLE inspections"))
    with pytest.raises(InspectionLogError, match="Cannot write to the inspection log at") as caught:
        log.record(decision())
    assert "--log-db" in str(caught.value)


def test_a_database_that_is_down_gives_a_clear_error():
    port = closed_port()
    with pytest.raises(InspectionLogError) as caught:
        InspectionLog.open(f"postgresql+psycopg://vispect:s3cret@127.0.0.1:{port}/inspections")
    message = str(caught.value)
    assert f"postgresql+psycopg://vispect:***@127.0.0.1:{port}/inspections" in message
    assert "s3cret" not in message and "***" in message
    assert "database server is running" in message and "--log-db" in message


def test_an_unwritable_sqlite_path_gives_a_clear_error(tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    with pytest.raises(InspectionLogError) as caught:
        InspectionLog.open(f"sqlite:///{not_a_folder / 'inspections.db'}")
    message = str(caught.value)
    assert "a-file/inspections.db" in message and "writable" in message


def test_a_malformed_url_is_refused():
    with pytest.raises(InspectionLogError, match="is not a database URL"):
        InspectionLog.open("not a url")


def test_a_newer_schema_is_refused(open_log, log_url):
    log = open_log()
    with log.engine.begin() as connection:
        connection.execute(text("UPDATE schema_version SET version = 99"))
    with pytest.raises(InspectionLogError, match=f"schema version 99.*up to {SCHEMA_VERSION}.*cannot downgrade"):
        InspectionLog.open(log_url)


def test_reopening_keeps_rows_and_version(open_log):
    log = open_log()
    first = log.record(decision())
    again = open_log()
    assert [row.id for row in again.list()] == [first] and again.schema_version() == SCHEMA_VERSION


def test_the_default_database_lives_in_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("VISPECT_DATA", str(tmp_path / "data"))
    assert default_url() == f"sqlite:///{tmp_path / 'data' / 'inspections.db'}"
    log = InspectionLog.open()
    try:
        log.record(decision())
        assert (tmp_path / "data" / "inspections.db").is_file()
        assert log.store_dir == tmp_path / "data" / "images"
        with log.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        log.close()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": "detect"}, "task 'detect' is not one of"),
        ({"flags": ("shiny",)}, "flags \\['shiny'\\]"),
        ({"image_sha256": "abc"}, "64 lowercase hex digits"),
    ],
)
def test_a_bad_decision_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        decision(**fields)


# -- the image store --


def test_the_image_store_round_trips_once(tmp_path):
    image = png_bytes()
    sha = image_sha256(image)
    path = store_image(tmp_path, image, sha)
    assert path == tmp_path / sha[:2] / f"{sha}.png" and path.read_bytes() == image
    assert store_image(tmp_path, image, sha) == path  # idempotent
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_the_image_store_refuses_bytes_that_do_not_match(tmp_path):
    image = png_bytes()
    with pytest.raises(ValueError, match="not the"):
        store_image(tmp_path, image, image_sha256(b"other"))
    with pytest.raises(ValueError, match="64 lowercase hex digits"):
        store_image(tmp_path, image, "../../etc/passwd")
    assert not any(tmp_path.iterdir())


def test_image_extensions_come_from_the_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="JPEG")
    assert image_extension(buffer.getvalue()) == "jpg"
    assert image_extension(png_bytes()) == "png"
    assert image_extension(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert image_extension(b"not an image") == "bin"


def test_an_image_that_cannot_be_stored_fails_the_record(open_log, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store's folder should be")
    log = open_log(store_images=True, store_dir=blocked)
    with pytest.raises(InspectionLogError, match=f"Cannot store the image in {blocked} for the inspection log"):
        log.record(decision(png_bytes()), png_bytes())
    assert log.list() == []  # nothing half-recorded
