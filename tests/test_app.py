"""The Gradio app through its public API, as a remote user would call it."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file

import app
from pipelines.examples import example_photos

ROOT = Path(__file__).resolve().parents[1]
CAT_LABELS = ("tiger cat", "Egyptian cat", "tabby, tabby cat")


@pytest.fixture(scope="module")
def client():
    app.demo.queue(default_concurrency_limit=2)
    app.demo.launch(prevent_thread_lock=True, show_error=True, quiet=True)
    try:
        yield Client(app.demo.local_url, verbose=False)
    finally:
        app.demo.close()


@pytest.fixture
def chelsea():
    return next(path for path in example_photos() if path.name == "chelsea.png")


def test_classify_endpoint_names_the_cat(client, chelsea):
    result, verdict = client.predict(handle_file(str(chelsea)), "default", 5, api_name="/classify")
    assert result["label"] in CAT_LABELS
    assert verdict.startswith(result["label"]) and "not been calibrated" in verdict
    confidences = {c["label"]: c["confidence"] for c in result["confidences"]}
    assert len(confidences) == 5
    assert sum(confidences[name] for name in CAT_LABELS if name in confidences) > 0.8


def test_a_bad_file_gets_the_clear_error(client, tmp_path):
    bad = tmp_path / "invoice.pdf"
    bad.write_bytes(b"%PDF-1.4 this is not a photo")
    with pytest.raises(Exception, match=r"Cannot read image 'invoice.pdf'.*not a recognised image format"):
        client.predict(handle_file(str(bad)), "default", 5, api_name="/classify")


def test_an_unknown_model_is_refused_by_name(client, chelsea):
    with pytest.raises(Exception, match="no-such-model"):
        client.predict(handle_file(str(chelsea)), "no-such-model", 5, api_name="/classify")


def test_eight_concurrent_requests_all_succeed(client):
    photos = list(example_photos())
    jobs = [photos[i % len(photos)] for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(client.predict, handle_file(str(path)), "default", 3, api_name="/classify") for path in jobs
        ]
        results = [future.result(timeout=120) for future in futures]
    for path, (result, _) in zip(jobs, results):
        assert result["label"] in example_photos()[path], path.name


def test_model_endpoint_describes_the_default(client):
    text, plots = client.predict("default", api_name="/describe_model")
    assert plots == []  # the default model ships no training report
    assert (
        "not calibrated" in text
        and "tf_efficientnet_lite0" in text
        and "| Classes | 1000 |" in text
        and "mean [0.5, 0.5, 0.5]" in text
    )


def test_checkpoints_in_the_models_folder_are_offered(tmp_path, tiny_vit_dir):
    import shutil

    from pipelines.registry import ClassifierRegistry

    shutil.copytree(tiny_vit_dir, tmp_path / "parts-vit")
    (tmp_path / "not-a-model").mkdir()
    registry = ClassifierRegistry.from_sources(["someone/hub-model"], models_dir=tmp_path)
    assert [choice.source for choice in registry.choices] == [
        "default",
        str(tmp_path / "parts-vit"),
        "someone/hub-model",
    ]
    assert registry.get(str(tmp_path / "parts-vit")).id2label[0] == "gear"


def test_share_without_internet_says_so_and_keeps_serving(tmp_path):
    """Run the real command line with --share and read what the user sees."""
    log = tmp_path / "app.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--share", "--port", "7931"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "No public share link" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, f"app exited:\n{log.read_text()}"
            time.sleep(0.5)
        assert "No public share link could be created" in log.read_text()
        result, _ = Client("http://127.0.0.1:7931/", verbose=False).predict(
            handle_file(str(next(iter(example_photos())))), "default", 1, api_name="/classify"
        )
        assert result["label"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_bad_classifier_flag_stops_with_a_message():
    result = subprocess.run(
        [sys.executable, "app.py", "--classifier", "./no/such/checkpoint"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "./no/such/checkpoint" in result.stderr and "does not exist" in result.stderr


def test_explain_endpoint_returns_panels_and_a_faithfulness_sentence(client, chelsea):
    from PIL import Image

    panels, top, text = client.predict(
        handle_file(str(chelsea)), "default", "gradcam", "top class", "", 0.5, api_name="/explain"
    )
    picture = Image.open(panels)
    assert picture.width > 2.5 * picture.height  # three panels side by side
    assert top["label"] in CAT_LABELS
    assert "Faithfulness" in text and "gradcam" in text


def test_explain_a_chosen_class_and_a_bad_layer(client, chelsea):
    _, _, text = client.predict(
        handle_file(str(chelsea)), "default", "gradcam", "espresso", "", 0.5, api_name="/explain"
    )
    assert "**espresso**" in text
    with pytest.raises(Exception, match="no_such_layer.*timm_model"):
        client.predict(handle_file(str(chelsea)), "default", "gradcam", "top class", "no_such_layer", 0.5,
                       api_name="/explain")  # fmt: skip


def test_explain_with_pixel_detail(client, chelsea):
    from PIL import Image

    plain, _, _ = client.predict(
        handle_file(str(chelsea)), "default", "gradcam", "top class", "", 0.5, False, api_name="/explain"
    )
    detailed, _, text = client.predict(
        handle_file(str(chelsea)), "default", "gradcam", "top class", "", 0.5, True, api_name="/explain"
    )
    assert "With pixel detail" in text and "Faithfulness" in text
    plain, detailed = (np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) for path in (plain, detailed))
    assert plain.shape == detailed.shape and np.abs(plain - detailed).mean() > 5  # a different heatmap is shown


def test_segment_endpoint_outlines_and_offers_downloads(tmp_path):
    """The Segment tab with a tiny segmenter whose head always answers 'scratches'."""
    import csv

    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from pipelines.registry import ClassifierRegistry, LazySegmenter
    from tests.conftest import tiny_segformer_config

    labels = {0: "background", 1: "pitting", 2: "crazing", 3: "scratches", 4: "patches"}
    model = SegformerForSemanticSegmentation(tiny_segformer_config(labels))
    with torch.no_grad():
        model.decode_head.classifier.bias[:] = torch.tensor([0.0, 0, 0, 20, 0])
    model.save_pretrained(tmp_path / "seg")
    SegformerImageProcessor(do_resize=False).save_pretrained(tmp_path / "seg")
    image = tmp_path / "strip.png"
    from PIL import Image

    Image.new("RGB", (320, 64), (128, 128, 128)).save(image)

    demo = app.build_demo(ClassifierRegistry.from_sources(models_dir=None), LazySegmenter(tmp_path / "seg"))
    demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        annotated, table, verdict, files = client.predict(handle_file(str(image)), 0, api_name="/segment")
        panels, why = client.predict(handle_file(str(image)), "scratches", "gradcam", api_name="/explain_defect")
        with pytest.raises(Exception, match="'pitting'.*not found in this image"):
            client.predict(handle_file(str(image)), "pitting", "gradcam", api_name="/explain_defect")
    finally:
        demo.close()
    assert Image.open(panels).width > 2.5 * Image.open(panels).height and "**scratches**" in why
    assert [a["label"] for a in annotated["annotations"]] == ["scratches"]
    rows = {row[0]: row for row in table["data"]}
    assert rows["scratches"][1] == pytest.approx(100.0) and rows["pitting"][1] == 0
    assert verdict.startswith("**Defective**: scratches")
    names = sorted(Path(f).name for f in files)
    assert names == ["strip_mask.png", "strip_rle.csv"]
    rle_rows = list(csv.reader(open(next(f for f in files if f.endswith(".csv")))))
    assert rle_rows[0] == ["ImageId", "EncodedPixels", "ClassId"] and len(rle_rows) == 5
    assert next(r for r in rle_rows if r[2] == "3")[1] == f"1 {64 * 320}"


def test_segment_without_a_model_says_how_to_get_one(tmp_path):
    from pipelines.registry import ClassifierRegistry, LazySegmenter

    demo = app.build_demo(ClassifierRegistry.from_sources(models_dir=None), LazySegmenter(None))
    demo.launch(prevent_thread_lock=True, quiet=True)
    image = tmp_path / "strip.png"
    from PIL import Image

    Image.new("RGB", (64, 32)).save(image)
    try:
        with pytest.raises(Exception, match="No defect segmentation model.*train.semantic_segmentation"):
            Client(demo.local_url, verbose=False).predict(handle_file(str(image)), 0, api_name="/segment")
    finally:
        demo.close()


def test_segment_verdict_says_when_stage1_and_the_segmenter_disagree():
    import numpy as np

    from pipelines.segmentation import DefectRegion, Segmentation

    def region(class_id, label, area, ruled_out):
        return DefectRegion(class_id, label, np.zeros((2, 2), bool), area, 0.9 if area else 0.0, "", ruled_out)

    regions = [region(1, "pitting", 0.0, True), region(2, "scratches", 0.0, False), region(3, "patches", 0.1, False)]
    stage1 = {"pitting": 0.01, "scratches": 0.97, "patches": 0.99}
    text = app.segmentation_markdown(Segmentation(np.zeros((2, 2), np.uint8), None, regions, True, stage1))
    assert text.startswith("**Defective**: patches") and "Ruled out, so removed from the outline: pitting." in text
    assert "Stage 1 sees scratches, but the segmenter outlined none" in text  # not patches: both agree there
    agreed = [region(1, "pitting", 0.0, True), region(2, "scratches", 0.2, False), region(3, "patches", 0.1, False)]
    agreeing = Segmentation(np.zeros((2, 2), np.uint8), None, agreed, True, stage1)
    assert "disagree" not in app.segmentation_markdown(agreeing)
