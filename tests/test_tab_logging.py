"""Every tab records its decisions: handlers called directly on a page built with a log, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import zipfile

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import text

from common.inspection_log import InspectionLog
from pipelines.registry import ClassifierRegistry, LazySegmenter, ModelChoice
from tests.conftest import save_tiny_stage1, tiny_segformer_config
from tests.inspection_databases import DATABASES, database_url
from ui import build_demo, inspect
from ui.common import TabContext

DEFECTS = {0: "background", 1: "pitting", 2: "scratches"}


@pytest.fixture(scope="module")
def segmenter_source(tmp_path_factory):
    """A tiny SegFormer whose head always paints scratches, with a stage 1 that rules both defect types out."""
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("segformer")
    model = SegformerForSemanticSegmentation(tiny_segformer_config(DEFECTS))
    with torch.no_grad():
        model.decode_head.classifier.bias[:] = torch.tensor([0.0, 0, 20])
    model.save_pretrained(folder)
    SegformerImageProcessor(do_resize=False).save_pretrained(folder)
    stage1 = save_tiny_stage1(tmp_path_factory.mktemp("stage1"), ["pitting", "scratches"], [-5.0, -5.0])
    return LazySegmenter(folder, stage1, runtime="torch")


@pytest.fixture
def registry(tiny_vit_dir):
    return ClassifierRegistry([ModelChoice("tiny", str(tiny_vit_dir))], runtime="torch")


@pytest.fixture(params=DATABASES)
def log(request, tmp_path):
    with database_url(request.param, tmp_path) as url:
        opened = InspectionLog.open(url, store_dir=tmp_path / "store", store_images=True)
        yield opened
        opened.close()


def png_file(folder, name: str, seed: int = 0, size=(64, 64)):
    pixels = np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)
    path = folder / name
    Image.fromarray(pixels).save(path)
    return path


def upload(path, name: str | None = None) -> dict:
    """What a raw ``gr.Image`` event receives for a browser upload."""
    return {"path": str(path), "orig_name": name or path.name, "url": None}


def handler(demo: gr.Blocks, api_name: str):
    return next(function.fn for function in demo.fns.values() if function.api_name == api_name)


def test_every_tab_records_its_decisions(log, registry, tiny_vit_dir, segmenter_source, tmp_path):
    demo = build_demo(registry, segmenter_source, inspection_log=log)
    part = png_file(tmp_path, "upload-1.png")

    _, verdict = handler(demo, "classify")(upload(part, "part 1.png"), str(tiny_vit_dir), 3)
    classified = log.list()[0]
    assert classified.channel == "classify" and classified.file_name == "part 1.png"
    assert verdict.endswith(f"Logged as inspection #{classified.id}.")
    assert classified.model_source == str(tiny_vit_dir) and classified.flags == ("low_confidence",)
    assert log.image_path(classified.id).read_bytes() == part.read_bytes()

    handler(demo, "explain")(upload(part, "part 1.png"), str(tiny_vit_dir), "gradcam", None, None, 0.5)
    explained = log.list()[0]
    assert explained.channel == "explain" and explained.answer == classified.answer

    strip = png_file(tmp_path, "strip.png", size=(128, 64))
    _, _, markdown, _ = handler(demo, "segment")(upload(strip), 100)
    segmented = log.list()[0]
    assert segmented.task == "segment" and segmented.channel == "segment" and segmented.defective is False
    # The segmenter alone paints scratches, which stage 1 ruled out: the tab kept the probabilities to see it.
    assert segmented.answer == "clean" and segmented.flags == ("disagree",)
    assert segmented.thresholds["min_area"]["scratches"] >= 100  # the minimum area the call used
    assert markdown.endswith(f"Logged as inspection #{segmented.id}.")
    assert len(log.list()) == 3


def test_the_inspect_tab_records_every_readable_image_in_batches(log, registry, segmenter_source, tmp_path):
    with gr.Blocks() as demo:
        context = TabContext(registry, segmenter_source, demo, inspection_log=log)
    batch = tmp_path / "batch.zip"
    with zipfile.ZipFile(batch, "w") as archive:
        for seed in range(5):
            buffer = io.BytesIO()
            Image.fromarray(np.full((40, 40, 3), seed * 40, np.uint8)).save(buffer, format="PNG")
            archive.writestr(f"parts/{seed}.png", buffer.getvalue())
        archive.writestr("parts/notes.png", "not a picture")  # unreadable: no decision, so no row
    writes = []
    record_many = log.record_many
    log.record_many = lambda decisions: writes.append(len(decisions)) or record_many(decisions)
    try:
        result = inspect.inspect_uploads(context, [str(batch)], inspect.CLASSIFY, registry.default, 0.99, 2)
    finally:
        del log.record_many
    rows = log.list(task="classify")
    assert sorted(row.file_name for row in rows) == [f"batch.zip/parts/{seed}.png" for seed in range(5)]
    assert {row.channel for row in rows} == {"inspect"} and all(row.flags == ("low_confidence",) for row in rows)
    assert all(row.thresholds["low_confidence"] == 0.99 for row in rows)  # the tab's threshold, not the default
    assert writes == [2, 2, 1]  # one transaction per batch
    assert "Logged as 5 inspections" in result.summary

    defects = inspect.inspect_uploads(context, [str(batch)], inspect.FIND_DEFECTS, None, 0.5, 16)
    segmented = log.list(task="segment")
    assert len(segmented) == 5 and {row.channel for row in segmented} == {"inspect"}
    assert "Logged as 5 inspections" in defects.summary


def test_without_a_log_nothing_is_recorded(registry, tiny_vit_dir, segmenter_source, tmp_path):
    demo = build_demo(registry, segmenter_source)
    part = png_file(tmp_path, "part.png")
    _, verdict = handler(demo, "classify")(upload(part), str(tiny_vit_dir), 3)
    _, _, markdown, _ = handler(demo, "segment")(upload(png_file(tmp_path, "strip.png", size=(128, 64))), 0)
    assert "Logged" not in verdict and "Logged" not in markdown
    with gr.Blocks() as page:
        context = TabContext(registry, segmenter_source, page)
    run = inspect.inspect_uploads(context, [str(part)], inspect.CLASSIFY, registry.default, 0.5, 2)
    assert "Logged" not in run.summary


def test_a_log_that_cannot_be_written_fails_the_request_with_its_reason(log, registry, tiny_vit_dir, tmp_path):
    demo = build_demo(registry, inspection_log=log)
    with log.engine.begin() as connection:
        connection.execute(text("DROP TABLE reviews"))
        connection.execute(text("DROP TABLE inspections"))
    with pytest.raises(gr.Error, match=r"Cannot write to the inspection log at .*--log-db"):
        handler(demo, "classify")(upload(png_file(tmp_path, "part.png")), str(tiny_vit_dir), 3)
