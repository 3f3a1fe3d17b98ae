"""The app in a real browser: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

import app
from bench.common import free_port
from pipelines.examples import example_photos
from pipelines.registry import LazySegmenter
from ui import build_demo

STEEL = Path(__file__).resolve().parents[1] / "examples" / "steel"
CAT_LABELS = ("tiger cat", "Egyptian cat", "tabby, tabby cat")

CHROMIUM = "/usr/bin/chromium"
# Flags for a sandboxed, offline machine: no background fetches that would only fail.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT_DIR = Path(__file__).resolve().parents[1] / "build" / "screenshots"

pytestmark = pytest.mark.slow


def _require_chromium():
    if Path(CHROMIUM).exists():
        return
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1 but {CHROMIUM} is missing: apt-get install chromium (CI does this in .ci/run)")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); CI requires this test")


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module (Playwright's sync API runs one instance per thread)."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def _new_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(120_000)  # a shared 2-core machine can be slow to render
    # Not "networkidle": a page with a gr.State (the Anomaly tab keeps its last result in one) holds
    # Gradio's heartbeat connection open for as long as it is shown, so the network never falls idle.
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("tab", name="Classify", exact=True).wait_for(timeout=120_000)
    return page


@pytest.fixture(scope="module")
def page(browser):
    app.demo.queue(default_concurrency_limit=2)
    app.demo.launch(prevent_thread_lock=True, show_error=True, quiet=True)
    try:
        yield _new_page(browser, app.demo.local_url)
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def logged(browser, tmp_path_factory):
    """(page, log) of the app started as ``app.py --log-db sqlite:///... --store-images`` with a fresh data folder."""
    folder = tmp_path_factory.mktemp("logged-app")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISPECT_DATA", str(folder))  # the image store goes there
        args = app.parse_args(
            ["--port", str(free_port()), "--log-db", f"sqlite:///{folder / 'inspections.db'}", "--store-images"]
        )
        log = app.open_inspection_log(args)
    demo = build_demo(app.registry, LazySegmenter.from_models_dir(), inspection_log=log)
    app.launch_app(demo, args, prevent_thread_lock=True)
    try:
        yield _new_page(browser, demo.local_url), log
    finally:
        demo.close()
        log.close()


def _upload(page, path, into: str = ""):
    """Upload ``path`` into the first image input, or the one inside the element with id ``into``."""
    page.locator(f"#{into} input[type=file]" if into else "input[type=file]").first.set_input_files(str(path))


def _fresh(page):
    """Reload the page, so no state is left from the test before.

    Waits for the document, not for "networkidle": Gradio keeps connections open while the
    server works, and on a busy machine the network may not fall idle for a long time. The
    elements the tests use are waited for where they are used.
    """
    page.reload(wait_until="domcontentloaded")
    page.get_by_role("tab", name="Classify", exact=True).wait_for(timeout=120_000)


def _open_tab(page, name):
    """A fresh page (no state from the test before) showing the tab called ``name``."""
    _fresh(page)
    page.get_by_role("tab", name=name, exact=True).click()


def _text_when(page, selector, text, timeout=60_000) -> str:
    """The text of ``selector`` once it contains ``text`` (results arrive asynchronously)."""
    page.wait_for_function(
        "([selector, text]) => document.querySelector(selector)?.textContent.includes(text)",
        arg=[selector, text],
        timeout=timeout,
    )
    return page.locator(selector).text_content()


def _open_card(page, selector, waited_for):
    """Open the visible model-card accordion and return its text once ``waited_for`` shows."""
    page.get_by_text("Model card (README.md saved with the checkpoint)").filter(visible=True).click()
    return _text_when(page, selector, waited_for)


def _screenshot(page, name):
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / f"{name}.png"), full_page=True)


def test_upload_a_photo_and_read_the_label(page):
    coffee = next(path for path in example_photos() if path.name == "coffee.png")
    _upload(page, coffee)
    page.get_by_role("button", name="Classify", exact=True).click()
    heading = page.get_by_test_id("label-output-value")
    heading.wait_for(timeout=60_000)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=label-output-value]')?.textContent.includes('espresso')",
        timeout=60_000,
    )
    assert "espresso" in heading.text_content()
    _screenshot(page, "classify")


def test_upload_a_non_image_and_see_the_error(page, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("these are meeting notes, not a picture")
    _fresh(page)
    _upload(page, notes)
    page.get_by_role("button", name="Classify", exact=True).click()
    error = page.get_by_text("not a recognised image format")
    error.first.wait_for(timeout=60_000)
    assert "notes.png" in page.content()
    _screenshot(page, "error")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_explain_a_photo_and_read_the_faithfulness_sentence(page):
    chelsea = next(path for path in example_photos() if path.name == "chelsea.png")
    _open_tab(page, "Explain")
    _upload(page, chelsea, into="explain-image")
    page.get_by_role("button", name="Explain", exact=True).click()
    text = _text_when(page, "#faithfulness", "Faithfulness")
    assert text.strip().startswith("gradcam on layer") and any(
        f"for {label} (probability" in text for label in CAT_LABELS
    )
    assert "heatmap" in text.split("Faithfulness", 1)[1]  # the deletion test's sentence, not only its score
    assert "served by ONNX Runtime, so the heatmap comes from its PyTorch weights" in text  # the default model
    assert page.get_by_test_id("label-output-value").filter(visible=True).text_content().strip() in CAT_LABELS
    _screenshot(page, "explain")


def test_explain_this_image_sends_the_photo_to_the_explain_tab(page):
    coffee = next(path for path in example_photos() if path.name == "coffee.png")
    _fresh(page)
    _upload(page, coffee)
    page.get_by_role("button", name="Explain this image").click()
    page.get_by_role("tab", name="Explain", selected=True).wait_for(timeout=30_000)
    page.locator("#explain-image img").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Explain", exact=True).click()
    assert "for espresso (probability" in _text_when(page, "#faithfulness", "Faithfulness")


def test_segment_an_example_strip_and_ask_why_a_class_is_missing(page):
    """steel_3: crazing and scratches outlined; pitting ruled out by stage 1, so its heatmap says so."""
    _open_tab(page, "Segment")
    page.locator("#steel-examples button", has=page.locator("img[src$='steel_3.jpg']")).click()
    page.locator("#steel-image img").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Find defects").click()
    verdict = _text_when(page, "#defect-verdict", "Defective")
    assert (
        verdict.strip().startswith("Defective: crazing")
        and "Ruled out, so removed from the outline: pitting" in verdict
    )
    assert page.locator("#defects .legend-item").all_text_contents() == ["crazing", "scratches"]
    downloads = page.locator("#defect-downloads a[download]")
    assert sorted(link.get_attribute("download") for link in downloads.all()) == ["steel_3_mask.png", "steel_3_rle.csv"]

    page.get_by_text("Why this outline?").click()
    page.locator("#defect-class input").click()
    page.get_by_role("option", name="pitting").click()
    page.get_by_role("button", name="Explain this defect").click()
    text = _text_when(page, "#defect-explanation", "Faithfulness")
    assert text.strip().startswith("The outline has no pitting region: stage 1 ruled pitting out")
    assert "shows where the segmenter alone, before stage 1 and the minimum area, paints pitting" in text
    _screenshot(page, "segment")


def test_model_tab_describes_a_classifier_and_the_segmenter_pair(page):
    _open_tab(page, "Model")
    details = _text_when(page, "#classifier-details", "Trust")  # the default, on load
    assert "tf_efficientnet_lite0" in details
    assert "ONNX Runtime" in details and "ONNX export check" in details and "top1_agreement" in details
    page.locator("#model-model input").click()
    page.get_by_role("option", name="steel-stage1").click()
    details = _text_when(page, "#classifier-details", "multi-label")
    assert "/models/steel-stage1" in details and "eval_mAP" in details
    assert "stage1: image classifier (4 classes)" in _open_card(page, "#classifier-details-card", "Intended use")
    _screenshot(page, "model-classifier")

    page.get_by_role("tab", name="Defect segmenter").click()
    details = _text_when(page, "#segmenter-details", "SegformerForSemanticSegmentation")
    assert "min_area_two_stage" in details and "eval_mean_dice" in details
    assert "ONNX Runtime" in details and "pixel_agreement" in details
    assert "Held-out evaluation" in _open_card(page, "#segmenter-details-card", "Held-out evaluation")
    _screenshot(page, "model")
    page.get_by_text("its stage 1", exact=True).click()
    assert "Stage 1 of steel-segformer" in _text_when(page, "#segmenter-details", "Stage 1 of")


def test_inspect_a_zip_of_photos_and_download_the_csv(page, tmp_path):
    """Three photos and a text file in a zip: a row each, the flagged photos in the gallery, the CSV downloaded."""
    import csv
    import io
    import zipfile

    photos = [path for path in example_photos() if path.name in ("chelsea.png", "coffee.png", "camera.png")]
    batch = tmp_path / "batch.zip"
    with zipfile.ZipFile(batch, "w") as archive:
        for photo in photos:
            archive.write(photo, f"photos/{photo.name}")
        archive.writestr("photos/notes.png", "meeting notes, not a picture")
    _open_tab(page, "Inspect")
    _upload(page, batch, into="inspect-files")
    page.locator("#inspect-files").get_by_text("batch.zip").first.wait_for(timeout=30_000)
    confidence = page.locator("#inspect-confidence input[type=number]")
    confidence.fill("0.99")  # no answer of the default model is this sure, so every photo is flagged
    confidence.press("Enter")
    page.get_by_role("button", name="Inspect", exact=True).click()
    summary = _text_when(page, "#inspect-summary", "flagged", timeout=180_000)
    assert "Inspected 4 image(s)" in summary and "4 flagged" in summary
    table = page.locator("#inspect-table").text_content()
    assert all(f"batch.zip/photos/{photo.name}" in table for photo in photos)
    assert "not a recognised image format" in table and "unreadable" in table
    assert page.locator("#inspect-gallery img").count() >= len(photos)
    _screenshot(page, "inspect")
    link = page.locator("#inspect-downloads a[download='inspection.csv']")
    with page.expect_download() as download_info:
        link.click()
    rows = list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text())))
    assert [row["path"] for row in rows] == [f"batch.zip/photos/{p.name}" for p in photos] + [
        "batch.zip/photos/notes.png"
    ]
    assert all(row["flagged"] == "true" for row in rows)
    assert rows[0]["label_1"] in CAT_LABELS and "notes.png" in rows[3]["error"]


def test_classify_a_few_images_then_review_the_flagged_one_in_history(logged, tmp_path):
    """Two sure answers and one noise image (top score about 14%, so flagged); its review takes it off the queue."""
    import numpy as np
    from PIL import Image

    page, log = logged
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(noise)
    photos = [path for path in example_photos() if path.name in ("coffee.png", "camera.png")]
    for number, path in enumerate([*photos, noise], start=1):
        _fresh(page)
        _upload(page, path)  # an upload classifies at once
        _text_when(page, "#verdict", f"Logged as inspection #{number}.")
    assert [item.file_name for item in log.list()] == ["noise.png", "camera.png", "coffee.png"]
    flagged = log.list()[0]
    assert flagged.flags == ("low_confidence",) and flagged.image_stored

    page.get_by_role("tab", name="History", exact=True).click()
    page.get_by_role("button", name="Search", exact=True).click()
    table = _text_when(page, "#history-table", "noise.png")
    assert all(name in table for name in ("coffee.png", "camera.png")) and "waiting" in table
    page.get_by_role("button", name="Refresh the queue").click()
    _text_when(page, "#queue-summary", "1 flagged decision waiting")
    queue = page.locator("#review-queue")
    queue.get_by_text("noise.png").filter(visible=True).first.click()  # selecting the row opens the decision
    details = _text_when(page, "#inspection-details", f"#{flagged.id}:")
    assert "Waiting for review" in details and "low_confidence" in details
    page.locator("#inspection-image img").first.wait_for(timeout=30_000)  # stored with --store-images
    _screenshot(page, "history")

    page.get_by_label("Reviewer").fill("Ann")
    page.get_by_role("button", name="Accept", exact=True).click()
    assert f"#{flagged.id}: Ann accepted" in _text_when(page, "#review-message", "Ann accepted")
    _text_when(page, "#queue-summary", "0 flagged decisions waiting")
    assert "noise.png" not in queue.text_content()  # it left the queue
    assert log.get(flagged.id).review.reviewer == "Ann" and log.queue() == []


@pytest.fixture(scope="module")
def training_app(browser, tmp_path_factory):
    """(page, classifiers, segmenters) of the app started as ``app.py --jobs-dir DIR`` with its own model lists."""
    from pipelines.registry import ClassifierRegistry, SegmenterRegistry

    folder = tmp_path_factory.mktemp("training-app")
    args = app.parse_args(["--port", str(free_port()), "--log-db", "off", "--jobs-dir", str(folder / "jobs")])
    registry = ClassifierRegistry.from_sources()  # its own list: the trained model joins this one only
    segmenters = SegmenterRegistry(LazySegmenter.from_models_dir())
    training = app.open_training_jobs(args, registry, None, segmenters)
    demo = build_demo(registry, segmenters, training=training)
    app.launch_app(demo, args, prevent_thread_lock=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(120_000)
    # The Train tab polls its jobs every 2 s, so the network never falls idle: wait for the page itself.
    page.goto(demo.local_url, wait_until="domcontentloaded")
    page.get_by_role("tab", name="Train", exact=True).wait_for(timeout=120_000)
    try:
        yield page, registry, segmenters
    finally:
        demo.close()
        training.manager.close()


def _progress_percent(page) -> float:
    return float(page.locator("#train-status progress").get_attribute("value") or 0)


def test_train_from_a_zip_then_classify_with_the_new_model(training_app, tmp_path):
    """Upload a zip, read the data check, start, watch the progress move, then pick the model in Classify."""
    import zipfile

    from tests.conftest import write_colour_folders

    page, registry, _ = training_app
    data = write_colour_folders(tmp_path / "colours", per_split={"train": 10, "validation": 4, "test": 4}, size=48)
    archive = tmp_path / "colours.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        for path in sorted(Path(data).rglob("*.png")):
            opened.write(path, Path("colours") / path.relative_to(data))
    page.get_by_role("tab", name="Train", exact=True).click()
    _upload(page, archive, into="train-data")
    page.locator("#train-data").get_by_text("colours.zip").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Check data", exact=True).click()
    summary = _text_when(page, "#train-check-summary", "Ready to train", timeout=60_000)
    assert "| red | 10 | 4 | 4 |" in summary.replace("\n", " ") or "red" in summary
    assert page.locator("#train-thumbnails img").count() >= 3  # a few images per class
    # The default model (EfficientNet-Lite0) at 64 px, 2 epochs of 4 steps: a real fine-tune that fits in a test
    # (that training beats chance is tests/test_jobs.py's to show, on a tiny model that learns in seconds).
    page.locator("#train-epochs input").fill("2")
    page.locator("#train-image-size textarea, #train-image-size input").first.fill("64x64")
    page.get_by_text("Advanced: more training flags").click()
    page.locator("#train-advanced textarea, #train-advanced input").first.fill("--per_device_train_batch_size 8")
    page.get_by_role("button", name="Start training", exact=True).click()
    page.wait_for_selector("#train-state[data-state='running']", timeout=120_000)
    seen = set()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        state = page.locator("#train-state").get_attribute("data-state")
        seen.add(round(_progress_percent(page)))
        if state not in ("queued", "running"):
            break
        time.sleep(0.5)
    _screenshot(page, "train")
    assert state == "finished", page.locator("#train-status").text_content()
    assert len(seen) >= 3 and max(seen) == 100, f"the progress bar should move, saw {sorted(seen)}"
    assert page.locator("#train-report img").count() >= 1  # the report's figures
    assert page.locator("#train-curves img, #train-curves svg, #train-curves canvas").count() >= 1
    trained = registry.choices[-1]
    assert trained.label.startswith("job-1: trained on colours.zip")

    page.get_by_role("tab", name="Classify", exact=True).click()
    page.locator("#classify-model input").click()
    page.get_by_role("option", name=trained.label).click()
    red = tmp_path / "red.png"
    from PIL import Image

    Image.new("RGB", (48, 48), (220, 30, 30)).save(red)
    _upload(page, red)
    page.get_by_role("button", name="Classify", exact=True).click()
    # The answer comes from the new model: its three classes, not ImageNet's thousand.
    page.wait_for_function(
        "() => ['red', 'green', 'blue'].every(name => document.querySelector('#classify-label')?.textContent"
        ".includes(name))",
        timeout=60_000,
    )
    scores = page.locator("#classify-label").text_content()
    _screenshot(page, "train-classify")
    assert all(name in scores for name in ("red", "green", "blue")), scores


def test_train_a_segmenter_then_segment_with_it_and_export_it_for_cpu(training_app, tmp_path):
    """A segmenter job joins the Segment tab's list; Export for CPU makes an ONNX job whose model joins it too."""
    import torch
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from datagen.steel import write_steel
    from tests.conftest import tiny_segformer_config, zip_folder

    page, _, segmenters = training_app
    steel = tmp_path / "steel"
    write_steel(steel, n=24, seed=3, height=64, width=320)
    archive = zip_folder(steel, tmp_path / "steel.zip")
    # A tiny SegFormer to start from: the test is about the app's wiring, not about learning defects.
    torch.manual_seed(0)
    tiny = tmp_path / "tiny-segformer"
    labels = {0: "background", 1: "pitting", 2: "crazing", 3: "scratches", 4: "patches"}
    SegformerForSemanticSegmentation(tiny_segformer_config(labels)).save_pretrained(tiny)
    SegformerImageProcessor(do_resize=False).save_pretrained(tiny)

    page.reload(wait_until="domcontentloaded")  # no state from the test before
    page.get_by_role("tab", name="Train", exact=True).click()
    _upload(page, archive, into="train-data")
    page.locator("#train-data").get_by_text("steel.zip").first.wait_for(timeout=30_000)
    page.locator("#train-task input").click()
    page.get_by_role("option", name="Defect segmenter (outlines defects)").click()
    page.get_by_role("button", name="Check data", exact=True).click()
    assert "Kaggle" in _text_when(page, "#train-check-summary", "Ready to train", timeout=60_000)
    page.locator("#train-base-model input").fill(str(tiny))
    page.locator("#train-base-model input").press("Enter")
    page.locator("#train-epochs input").fill("1")
    page.locator("#train-image-size textarea, #train-image-size input").first.fill("32x160")
    page.get_by_text("Advanced: more training flags").click()
    advanced = "--max_steps 2 --crop_size 32x160 --per_device_train_batch_size 4"
    page.locator("#train-advanced textarea, #train-advanced input").first.fill(advanced)
    page.get_by_role("button", name="Start training", exact=True).click()
    page.wait_for_selector("#train-state[data-state='finished']", timeout=300_000)
    trained = segmenters.choices[-1]
    assert trained.label.endswith("trained on steel.zip")

    page.get_by_role("button", name="Export for CPU (ONNX, checked against PyTorch on the job's test images)").click()
    trained_job = trained.label.split(":")[0]
    # The tab now follows the export's own job: finished, and not the job it exported.
    page.wait_for_function(
        "(job) => { const state = document.querySelector('#train-state');"
        " return state && !state.textContent.startsWith(job + ':') && state.dataset.state === 'finished'; }",
        arg=trained_job,
        timeout=300_000,
    )
    exported = segmenters.choices[-1]
    assert exported.source != trained.source and "ONNX float32" in exported.label
    _screenshot(page, "train-export")

    # Both are in the Segment tab's list without a reload; the job's own model has no stage 1.
    page.get_by_role("tab", name="Segment", exact=True).click()
    strips = sorted(steel.glob("train_images/*.jpg"))
    for model, strip in ((trained, strips[0]), (exported, strips[1])):
        page.locator("#segmenter input").click()
        page.get_by_role("option", name=model.label).click()
        _upload(page, strip, into="steel-image")
        page.get_by_role("button", name="Find defects", exact=True).click()
        # This strip's answer, not the last one (the file list shows the extension apart from the name).
        _text_when(page, "#defect-downloads", f"{strip.stem}_mask")
        verdict = page.locator("#defect-verdict").text_content().strip()
        assert verdict.startswith(("Defective", "Clean")), verdict
        assert "Stage 1" not in verdict, verdict  # the demo pair would say what its stage 1 found


def test_anomaly_tab_scores_an_example_and_the_slider_moves_the_line(page):
    """A defective example strip is anomalous; a line moved above its score passes it, and the FRR sentence follows."""
    import math
    import re

    from ui.anomaly import ANOMALY_EXAMPLES

    example = next(path for path in sorted(ANOMALY_EXAMPLES.glob("*.png")) if not path.stem.startswith("good"))
    _open_tab(page, "Anomaly")
    page.locator("#anomaly-examples button", has=page.locator(f"img[src$='{example.name}']")).click()
    page.locator("#anomaly-image img").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Detect anomalies").click()
    verdict = _text_when(page, "#anomaly-verdict", "anomalous", timeout=120_000)
    score = float(re.search(r"Score (\d+\.\d+) × threshold: anomalous", verdict).group(1))
    fitted = re.search(r"False-reject rate at 1\.00 × threshold: (\d+\.\d)% of the held-out good images", verdict)
    assert score > 1.0 and fitted and float(fitted.group(1)) <= 1.0  # the demo's 1% target, on its own scores
    page.locator("#anomaly-overlay img").first.wait_for(timeout=30_000)
    _screenshot(page, "anomaly")

    line = (math.floor(score * 20) + 2) / 20  # on the slider's 0.05 grid, above the score
    threshold = page.locator("#anomaly-threshold input[type=number]")
    threshold.fill(f"{line:.2f}")
    threshold.press("Enter")
    moved = _text_when(page, "#anomaly-verdict", "line moved to")
    assert f"line moved to {line:.2f} × threshold): good." in moved
    higher = re.search(rf"False-reject rate at {line:.2f} × threshold: (\d+\.\d)%", moved)
    assert higher and float(higher.group(1)) <= float(fitted.group(1))  # a higher line rejects no more
    threshold.fill("0.5")
    threshold.press("Enter")
    loose = _text_when(page, "#anomaly-verdict", "False-reject rate at 0.50 × threshold")
    rate = float(re.search(r"False-reject rate at 0\.50 × threshold: (\d+\.\d)%", loose).group(1))
    assert rate > 0 and "would be called anomalous" in loose
