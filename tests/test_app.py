"""The Gradio app through its public API, as a remote user would call it."""

from __future__ import annotations

import concurrent.futures
import re
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
from ui import build_demo
from ui.segment import defect_explanation_markdown, segmentation_markdown

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
    text, plots, card = client.predict("default", api_name="/describe_model")
    assert plots == []  # the default model ships no training report
    assert card  # its model card, or a sentence saying there is none
    assert (
        "not calibrated" in text
        and "tf_efficientnet_lite0" in text
        and "| Classes | 1000 |" in text
        and "mean [0.5, 0.5, 0.5]" in text
    )
    # Served by ONNX Runtime from the cache build, with the parity figures that checked it.
    assert "| Runtime | ONNX Runtime (`model.onnx`, checked against PyTorch, see below)" in text
    assert "**ONNX export check**" in text and "| top1_agreement | 1 |" in text and "| max_abs_logit_diff |" in text


def test_model_tab_says_which_runtime_serves_each_classifier(tiny_vit_onnx_dir):
    from pipelines.registry import ClassifierRegistry, LazySegmenter

    texts = {}
    for runtime in ("auto", "torch"):
        registry = ClassifierRegistry.from_sources([str(tiny_vit_onnx_dir)], models_dir=None, runtime=runtime)
        demo = build_demo(registry, LazySegmenter(None))
        demo.launch(prevent_thread_lock=True, quiet=True)
        try:
            texts[runtime], _, _ = Client(demo.local_url, verbose=False).predict(
                str(tiny_vit_onnx_dir), api_name="/describe_model"
            )
        finally:
            demo.close()
    # An export without a report (train.export writes one; this fixture does not) still says what serves it.
    assert "| Runtime | ONNX Runtime (`model.onnx`, no export_report.json says how it was checked)" in texts["auto"]
    assert "| Runtime | PyTorch (eager) |" in texts["torch"] and "ONNX export check" not in texts["torch"]


def test_a_bad_runtime_flag_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        app.parse_args(["--runtime", "tensorrt"])
    assert "--runtime" in capsys.readouterr().err
    assert app.parse_args(["--runtime", "torch"]).runtime == "torch" and app.parse_args([]).runtime == "auto"


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


def test_stage1_without_a_segmenter_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        app.parse_args(["--stage1", "models/steel-stage1"])
    assert "--stage1 goes with --segmenter" in capsys.readouterr().err


def test_explain_endpoint_returns_panels_and_a_faithfulness_sentence(client, chelsea):
    from PIL import Image

    panels, top, text = client.predict(
        handle_file(str(chelsea)), "default", "gradcam", "top class", "", 0.5, api_name="/explain"
    )
    picture = Image.open(panels)
    assert picture.width > 2.5 * picture.height  # three panels side by side
    assert top["label"] in CAT_LABELS
    assert "Faithfulness" in text and "gradcam" in text
    assert text.endswith("This model is served by ONNX Runtime, so the heatmap comes from its PyTorch weights "
                         "(model.safetensors, kept beside model.onnx), which give the same answers: a class activation "
                         "map needs the network's activations and gradients.")  # fmt: skip


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

    demo = build_demo(ClassifierRegistry.from_sources(models_dir=None), LazySegmenter(tmp_path / "seg"))
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

    demo = build_demo(ClassifierRegistry.from_sources(models_dir=None), LazySegmenter(None))
    demo.launch(prevent_thread_lock=True, quiet=True)
    image = tmp_path / "strip.png"
    from PIL import Image

    Image.new("RGB", (64, 32)).save(image)
    try:
        with pytest.raises(Exception, match=r"No defect segmentation model.*train\.(semantic_)?segmentation"):
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
    text = segmentation_markdown(Segmentation(np.zeros((2, 2), np.uint8), None, regions, True, stage1))
    assert text.startswith("**Defective**: patches") and "Ruled out, so removed from the outline: pitting." in text
    assert "Stage 1 sees scratches, but the segmenter outlined none" in text  # not patches: both agree there
    agreed = [region(1, "pitting", 0.0, True), region(2, "scratches", 0.2, False), region(3, "patches", 0.1, False)]
    agreeing = Segmentation(np.zeros((2, 2), np.uint8), None, agreed, True, stage1)
    assert "disagree" not in segmentation_markdown(agreeing)


STEEL = ROOT / "examples" / "steel"


def test_describe_segmenter_endpoint_reads_the_demo_pair(client):
    text, plots, card = client.predict("segmenter", api_name="/describe_segmenter")
    assert "SegformerForSemanticSegmentation (segformer)" in text
    assert "background, pitting, crazing, scratches, patches" in text and "tiles 512 px wide" in text
    assert "TimmWrapperForImageClassification" in text  # its stage 1
    # Both tuned sets from config.json, and the one served with a stage 1 attached.
    assert "| pitting | 200 | 0 |" in text and "| patches | 12800 | 0 |" in text
    assert "applied now: `min_area_two_stage`" in text
    assert "| eval_mean_dice | 0.6987 |" in text  # eval_results.json beside the weights
    assert "| Runtime | ONNX Runtime (`model.onnx`, checked against PyTorch" in text  # exported into the cache
    assert "| pixel_agreement | 1 |" in text and "| defect_pixel_agreement | 1 |" in text
    assert card.startswith("# ") and "Held-out evaluation" in card and "library_name" not in card
    assert sorted(Path(item["image"]).name for item in plots) == ["predictions.png", "training_curves.png"]
    assert [item["caption"] for item in plots][0].startswith("Validation images")

    text, plots, card = client.predict("stage 1", api_name="/describe_segmenter")
    assert text.startswith("**Stage 1 of `") and "pitting 0.2" in text and "patches 0.1" in text
    assert "tf_efficientnet_lite0" in text and "| Classes | 4 |" in text and "**Trust**: multi-label" in text
    assert "| Runtime | ONNX Runtime" in text and "| top1_agreement | 1 |" in text
    assert [Path(item["image"]).name for item in plots] == ["training_curves.png"]
    assert "library_name" not in card and "stage" in card.lower()


def test_explain_a_defect_class_that_stage1_ruled_out(client):
    """steel_3: the segmenter alone paints pitting, stage 1 rules it out, so the outline has none."""
    strip = handle_file(str(STEEL / "steel_3.jpg"))
    _, text = client.predict(strip, "pitting", "gradcam", api_name="/explain_defect")
    assert text.startswith("**The outline has no pitting region**: stage 1 ruled pitting out (it gives pitting 0.")
    assert "(**gradcam** on layer `decode_head.activation`) shows where the segmenter alone, before stage 1" in text
    assert re.search(r"paints \*\*pitting\*\*: \d{3,} pixels with mean probability", text)  # thousands, in fact
    assert "none of it in the outline shown" in text
    assert "(probability" not in text and "Faithfulness" in text
    assert "served by ONNX Runtime, so the heatmap comes from its PyTorch weights" in text
    _, text = client.predict(strip, "crazing", "gradcam", api_name="/explain_defect")  # outlined: as before
    assert text.startswith("**gradcam** on layer") and "**crazing** (probability" in text
    with pytest.raises(Exception, match="'patches'.*not found in this image"):  # not even painted
        client.predict(strip, "patches", "gradcam", api_name="/explain_defect")


def test_explain_a_defect_class_under_the_minimum_area(client):
    """steel_1's scratch (about 1,900 pixels) is dropped when the slider asks for 2,000."""
    strip = handle_file(str(STEEL / "steel_1.jpg"))
    _, _, verdict, _ = client.predict(strip, 2000, api_name="/segment")
    assert verdict.startswith("**Clean**")
    _, text = client.predict(strip, "scratches", "gradcam", 2000, api_name="/explain_defect")
    assert text.startswith(
        "**The outline has no scratches region**: the segmenter's scratches pixels add up to less than the "
        "minimum area of 2000 pixels, so they were dropped."
    )


def test_defect_wording_counts_the_pixels_when_the_explanation_has_them():
    from types import SimpleNamespace

    from pipelines.segmentation import DefectRegion, Segmentation

    region = DefectRegion(2, "scratches", np.zeros((2, 2), bool), 0.0, 0.0, "", False)
    outline = Segmentation(np.zeros((2, 2), np.uint8), None, [region], False, None)
    explanation = SimpleNamespace(
        target_index=2, target_label="scratches", target_score=0.7, method="gradcam", layer_name="head",
        guided=False, faithfulness=None, region_pixels=1234,
    )  # fmt: skip
    text = defect_explanation_markdown(explanation, outline, {2: 0})
    assert "the segmenter did not outline scratches in this image" in text
    assert "paints **scratches**: 1234 pixels with mean probability 70%" in text


def test_model_tab_shows_a_classifiers_model_card(tmp_path, tiny_vit_dir):
    import shutil

    from pipelines.registry import ClassifierRegistry, LazySegmenter

    shutil.copytree(tiny_vit_dir, tmp_path / "parts-vit")
    (tmp_path / "parts-vit" / "README.md").write_text(
        "---\nlibrary_name: transformers\n---\n\n# parts-vit\n\nTop-1 accuracy 91% on the held-out parts.\n"
    )
    demo = build_demo(ClassifierRegistry.from_sources(models_dir=tmp_path), LazySegmenter(None))
    demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        text, _, card = Client(demo.local_url, verbose=False).predict(
            str(tmp_path / "parts-vit"), api_name="/describe_model"
        )
    finally:
        demo.close()
    assert card == "# parts-vit\n\nTop-1 accuracy 91% on the held-out parts."
    assert "| Classes | 3 |" in text and "see its model card below" in text
