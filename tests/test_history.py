"""The History tab's handlers, called directly on a real log, and its events' API names."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from common.image_io import ImageLoadError
from common.image_store import image_sha256
from common.inspection_log import Decision, InspectionLog
from pipelines.registry import ClassifierRegistry, LazySegmenter, ModelChoice
from ui import history
from ui.common import TabContext, uploaded_bytes, uploaded_name


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def log(tmp_path):
    opened = InspectionLog.open(f"sqlite:///{tmp_path / 'log.db'}", store_dir=tmp_path / "store", store_images=True)
    yield opened
    opened.close()


@pytest.fixture
def registry(tiny_vit_dir):
    return ClassifierRegistry([ModelChoice("tiny", str(tiny_vit_dir))], runtime="torch")


def record(log, source, *, task="classify", answer="gear", flags=(), seed=0, store=True, **fields) -> int:
    image = png_bytes(seed)
    decision = Decision(
        task=task,
        channel=fields.pop("channel", task),
        image_sha256=image_sha256(image),
        file_name=f"part-{seed}.png",
        model_source=source,
        answer=answer,
        confidence=fields.pop("confidence", 0.4),
        scores=fields.pop("scores", {answer: 0.4, "washer": 0.35}),
        flags=tuple(flags),
        **fields,
    )
    return log.record(decision, image if store else None)


def test_search_filters_by_task_model_flag_and_date(log):
    classified = record(log, "tiny", flags=("low_confidence",))
    segmented = record(log, "models/steel-segformer", task="segment", answer="clean", defective=False, seed=1)
    rows = history.search_history(log, "", None, "all", "all", "all")
    assert [row[0] for row in rows] == [segmented, classified]
    assert rows[1][1:9] == [rows[1][1], "classify", "classify", "part-0.png", "tiny", "gear", "40%", "low_confidence"]
    assert rows[1][9] == "waiting" and rows[0][9] == ""
    assert [row[0] for row in history.search_history(log, "", "", "segment", "all", "all")] == [segmented]
    assert [row[0] for row in history.search_history(log, "", "", "all", "tiny", "all")] == [classified]
    assert [row[0] for row in history.search_history(log, "", "", "all", "all", "low_confidence")] == [classified]

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    assert len(history.search_history(log, today, today, "all", "all", "all")) == 2  # "to" includes the whole day
    assert history.search_history(log, tomorrow, "", "all", "all", "all") == []
    with pytest.raises(gr.Error, match="after the 'to' date"):
        history.search_history(log, tomorrow, today, "all", "all", "all")
    with pytest.raises(gr.Error, match="is not a date: use YYYY-MM-DD"):
        history.search_history(log, "last tuesday", "", "all", "all", "all")


def test_a_row_opens_with_its_image_answer_and_scores(log):
    shown = record(log, "tiny", flags=("unknown",), unknown=True, thresholds={"low_confidence": 0.5})
    image, text, scores = history.open_inspection(log, shown)
    assert open(image, "rb").read() == png_bytes(0)
    assert "Unknown (closest class: gear), 40%" in text and "low_confidence 0.5" in text
    assert "Waiting for review" in text and scores == {"gear": 0.4, "washer": 0.35}

    unstored = record(log, "tiny", seed=2, store=False)
    image, text, _ = history.open_inspection(log, unstored)
    assert image is None and "--store-images" in text
    with pytest.raises(gr.Error, match="no inspection #999"):
        history.open_inspection(log, 999)
    with pytest.raises(gr.Error, match="Choose a row"):
        history.open_inspection(log, None)


def test_the_heatmap_of_a_stored_classification(log, registry, tiny_vit_dir):
    stored = record(log, str(tiny_vit_dir))
    panels, text = history.explain_inspection(log, registry, stored)
    assert np.asarray(panels).ndim == 3 and "gradcam" in text.lower()

    with pytest.raises(gr.Error, match="not stored"):
        history.explain_inspection(log, registry, record(log, str(tiny_vit_dir), seed=3, store=False))
    with pytest.raises(gr.Error, match="--classifier models/gone"):
        history.explain_inspection(log, registry, record(log, "models/gone", seed=4))
    with pytest.raises(gr.Error, match="Why this outline"):
        history.explain_inspection(log, registry, record(log, "seg", task="segment", answer="clean", seed=5))


def test_a_review_leaves_the_queue(log):
    first = record(log, "tiny", flags=("low_confidence",))
    second = record(log, "tiny", flags=("disagree",), seed=1)
    record(log, "tiny", seed=2)  # not flagged: never queued
    rows, summary = history.review_queue(log)
    assert [row[0] for row in rows] == [first, second] and "**2** flagged decisions waiting" in summary

    message, rows, summary = history.submit_review(log, first, "Ann", accepted=True)
    assert message == f"#{first}: Ann accepted 'gear'."
    assert [row[0] for row in rows] == [second] and "**1** flagged decision waiting" in summary
    message, rows, _ = history.submit_review(log, second, "Ann", accepted=False, label="washer")
    assert message == f"#{second}: Ann set the label to 'washer'." and rows == []
    assert log.get(second).review.label == "washer"
    assert history.search_history(log, "", "", "all", "all", "all")[1][9] == "set to washer"

    with pytest.raises(gr.Error, match="reviewer's name"):
        history.submit_review(log, first, "", accepted=True)
    with pytest.raises(gr.Error, match="needs a label"):
        history.submit_review(log, first, "Ann", accepted=False, label="")


def test_label_choices_follow_the_model(log, registry, tiny_vit_dir):
    served = log.get(record(log, str(tiny_vit_dir)))
    assert history.label_choices(served, registry, []) == ["gear", "hex nut", "washer"]
    gone = log.get(record(log, "models/gone", seed=1))
    assert history.label_choices(gone, registry, []) == ["gear", "washer"]
    segment = log.get(record(log, "seg", task="segment", answer="clean", seed=2))
    assert history.label_choices(segment, registry, ["scratches"]) == ["clean", "scratches"]
    anomaly = log.get(record(log, "models/steel-anomaly", task="anomaly", answer="anomalous", seed=3))
    assert history.label_choices(anomaly, registry, ["scratches"]) == ["good", "anomalous"]  # not its score names


def test_without_a_log_the_tab_says_it_is_off():
    with pytest.raises(gr.Error, match="inspection log is off"):
        history.search_history(None, "", "", "all", "all", "all")
    with pytest.raises(gr.Error, match="inspection log is off"):
        history.review_queue(None)


@pytest.mark.parametrize("with_log", [True, False])
def test_every_button_is_an_endpoint(log, registry, with_log):
    with gr.Blocks() as demo:
        context = TabContext(registry, LazySegmenter(None), demo, inspection_log=log if with_log else None)
        with gr.Tabs():
            history.build(context)
    names = {dependency.api_name for dependency in demo.fns.values() if dependency.api_name}
    assert {
        "search_history",
        "open_inspection",
        "explain_inspection",
        "review_queue",
        "accept_answer",
        "set_label",
    } <= names


def test_uploads_are_logged_as_the_bytes_and_name_the_user_gave(log, registry, tmp_path):
    upload = tmp_path / "upload.png"
    upload.write_bytes(png_bytes(7))
    payload = {"path": str(upload), "orig_name": "part 7.png", "url": None}
    assert uploaded_bytes(payload) == png_bytes(7) and uploaded_name(payload) == "part 7.png"
    assert uploaded_bytes(None) is None and uploaded_name(None) is None
    with pytest.raises(ImageLoadError, match="cannot be read"):
        uploaded_bytes({"path": str(tmp_path / "gone.png")})

    image = uploaded_bytes(payload)
    decision = Decision(
        task="classify",
        channel="classify",
        image_sha256=image_sha256(image),
        file_name=uploaded_name(payload),
        model_source="tiny",
        answer="gear",
    )
    with gr.Blocks() as demo:
        logged = TabContext(registry, LazySegmenter(None), demo, inspection_log=log)
        off = TabContext(registry, LazySegmenter(None), demo)
    inspection = log.get(logged.record_decision(decision, image))
    assert inspection.file_name == "part 7.png" and log.image_path(inspection.id).read_bytes() == image
    assert off.record_decision(decision, image) is None
