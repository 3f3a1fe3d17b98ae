"""Serving exported ONNX graphs: which runtime ``auto`` picks, what is refused, and that answers do not change."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from common import onnx_network
from common.checkpoints import ModelLoadError
from common.onnx_network import OnnxExportError
from pipelines import runtime as runtime_module
from pipelines.classification import ImageClassifier
from pipelines.classification.cli import main
from pipelines.explanation import explain_prediction
from pipelines.registry import ClassifierRegistry, LazySegmenter
from pipelines.segmentation import DefectSegmenter


def _images(count=6, seed=3):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (30 + 5 * i, 40, 3), dtype=np.uint8)) for i in range(count)]


def test_auto_serves_model_onnx_when_the_directory_holds_one(tiny_vit_onnx_dir, tmp_path):
    classifier = ImageClassifier.from_pretrained(tiny_vit_onnx_dir)
    assert classifier.runtime == "onnx" and classifier.network.input_shape == (None, 3, 32, 32)
    assert classifier.describe().runtime == "onnx"
    assert classifier.model is not None  # the eager model stays loaded for describe() and Grad-CAM
    plain = shutil.copytree(tiny_vit_onnx_dir, tmp_path / "plain", ignore=shutil.ignore_patterns("*.onnx"))
    assert ImageClassifier.from_pretrained(plain).runtime == "torch"
    assert ImageClassifier.from_pretrained(tiny_vit_onnx_dir, runtime="torch").network is None


def test_onnx_without_an_export_is_refused_with_the_command_that_makes_one(tiny_vit_dir):
    with pytest.raises(
        ModelLoadError, match=rf"has no model.onnx.*python -m train.export {tiny_vit_dir} OUT --format onnx"
    ):
        ImageClassifier.from_pretrained(tiny_vit_dir, runtime="onnx")


def test_a_bad_runtime_is_refused_by_name(tiny_vit_dir):
    message = r"runtime must be one of 'auto', 'torch', 'onnx', got 'tensorrt'"
    with pytest.raises(ValueError, match=message):
        ImageClassifier.from_pretrained(tiny_vit_dir, runtime="tensorrt")
    with pytest.raises(ValueError, match=message):
        DefectSegmenter.from_pretrained(tiny_vit_dir, runtime="tensorrt")
    with pytest.raises(ValueError, match=message):
        ClassifierRegistry.from_sources(models_dir=None, runtime="tensorrt")
    with pytest.raises(ValueError, match=message):
        LazySegmenter(None, runtime="tensorrt")


def test_a_calibrated_model_answers_alike_on_both_runtimes(tiny_vit_onnx_dir, tmp_path):
    checkpoint = shutil.copytree(tiny_vit_onnx_dir, tmp_path / "calibrated")
    images = _images()
    eager_classifier = ImageClassifier.from_pretrained(checkpoint, runtime="torch")
    eager_logits = eager_classifier.forward(eager_classifier.preprocess(images))
    # A threshold half way between two images' scores: some are "unknown", none is near the line.
    scores = np.sort(torch.softmax(eager_logits / 2.0, -1).max(-1).values.numpy())
    gap = int(np.argmax(np.diff(scores)))
    threshold = float(scores[gap : gap + 2].mean())
    (checkpoint / "calibration.json").write_text(
        json.dumps(
            {
                "temperature": 2.0,
                "ece_before": 0.1,
                "ece_after": 0.02,
                "rejection": {"method": "max_softmax", "threshold": threshold},
                "multi_label_thresholds": None,
            }
        )
    )
    answers = {
        runtime: ImageClassifier.from_pretrained(checkpoint, runtime=runtime).classify_batch(images, top_k=3)
        for runtime in ("torch", "onnx")
    }
    eager, exported = answers["torch"], answers["onnx"]
    assert any(a.unknown for a in eager) and not all(a.unknown for a in eager)
    for a, b in zip(eager, exported):
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
        assert [p.score for p in b.predictions] == pytest.approx([p.score for p in a.predictions], abs=1e-5)
        assert a.unknown == b.unknown and a.threshold == b.threshold == threshold
        assert b.open_set_score == pytest.approx(a.open_set_score, abs=1e-5)
    trust = ImageClassifier.from_pretrained(checkpoint, runtime="onnx").describe().trust
    assert trust.temperature == 2.0 and trust.rejection_threshold == threshold


def test_the_export_report_is_shown_as_it_was_written(tiny_vit_onnx_dir, tmp_path):
    checkpoint = shutil.copytree(tiny_vit_onnx_dir, tmp_path / "reported")
    report = {"max_abs_logit_diff": 2e-6, "top1_agreement": 1.0, "latency_ms": {"eager": 9.1, "onnx": 4.2}}
    (checkpoint / "export_report.json").write_text(json.dumps(report))
    classifier = ImageClassifier.from_pretrained(checkpoint)
    assert classifier.export_report == report == classifier.describe().export_report
    (checkpoint / "export_report.json").write_text("{broken")
    assert ImageClassifier.from_pretrained(checkpoint).export_report is None  # still served


def test_a_fixed_size_graph_the_processor_does_not_fit_is_refused(tiny_vit_onnx_dir, tmp_path):
    checkpoint = shutil.copytree(tiny_vit_onnx_dir, tmp_path / "resized")
    config = json.loads((checkpoint / "preprocessor_config.json").read_text())
    config["size"] = {"height": 48, "width": 48}
    (checkpoint / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"takes N x 3 x 32 x 32, but its preprocessing makes 48x48 images"):
        ImageClassifier.from_pretrained(checkpoint)


def test_an_onnx_served_classifier_is_explained_with_its_eager_weights(tiny_resnet_onnx_dir, photo_file):
    classifier = ImageClassifier.from_pretrained(tiny_resnet_onnx_dir)
    assert classifier.runtime == "onnx"
    classifier.served = runtime_module.ServedNetwork("onnx", _Refusing(classifier.network))
    explanation = explain_prediction(classifier, photo_file, target="gear")
    assert explanation.heatmap.shape == (120, 160) and explanation.faithfulness is not None
    assert classifier.eager().runtime == "torch" and classifier.eager().model is classifier.model
    assert classifier.runtime == "onnx"  # the classifier itself is left as it was


class _Refusing:
    """An ONNX network that fails the test when called."""

    def __init__(self, network):
        self.input_shape, self.path = network.input_shape, network.path

    def __call__(self, pixel_values):
        raise AssertionError("Grad-CAM ran the ONNX graph")


def test_the_cli_and_the_registry_serve_exported_directories(tiny_vit_onnx_dir, tmp_path):
    registry = ClassifierRegistry.from_sources([str(tiny_vit_onnx_dir)], models_dir=None)
    assert registry.get(str(tiny_vit_onnx_dir)).runtime == "onnx"
    eager = ClassifierRegistry.from_sources([str(tiny_vit_onnx_dir)], models_dir=None, runtime="torch")
    assert eager.get(str(tiny_vit_onnx_dir)).runtime == "torch"
    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
    out = tmp_path / "rows.csv"
    options = ["--model", str(tiny_vit_onnx_dir), "--runtime", "onnx", "--csv", str(out)]
    assert main([str(tmp_path / "a.png"), *options]) == 0
    assert len(out.read_text().splitlines()) == 2  # the header and the image


@pytest.fixture
def project_models(tmp_path, monkeypatch, tiny_vit_dir):
    """A tiny classifier inside a stand-in for the project's models/ folder, with its own cache."""
    monkeypatch.setattr(runtime_module, "PROJECT_MODELS_DIR", tmp_path / "models")
    monkeypatch.setenv("VISPECT_CACHE", str(tmp_path / "cache"))
    return shutil.copytree(tiny_vit_dir, tmp_path / "models" / "parts-vit")


def test_project_checkpoints_are_exported_once_into_the_cache(project_models, tmp_path, monkeypatch):
    classifier = ImageClassifier.from_pretrained(project_models)
    assert classifier.runtime == "onnx" and not (project_models / "model.onnx").exists()  # models/ is not written
    folder = classifier.network.path.parent
    assert folder.parent == tmp_path / "cache" / "onnx" and folder.name.startswith("parts-vit-")
    report = classifier.export_report
    assert report["max_abs_logit_diff"] <= 1e-3 and report["top1_agreement"] == 1.0 and report["check_inputs"] >= 5

    def must_not_export(*args, **kwargs):
        raise AssertionError("a complete export was exported again")

    monkeypatch.setattr(onnx_network, "export_network", must_not_export)
    again = ImageClassifier.from_pretrained(project_models)
    assert again.runtime == "onnx" and again.network.path == classifier.network.path
    images = _images(3)
    expected = ImageClassifier.from_pretrained(project_models, runtime="torch").classify_batch(images)
    assert [r.predictions[0].index for r in again.classify_batch(images)] == [r.predictions[0].index for r in expected]


def test_a_failed_project_export_is_logged_served_by_pytorch_and_not_retried(project_models, monkeypatch, caplog):
    calls = []

    def broken_exporter(*args, **kwargs):
        calls.append(1)
        raise OnnxExportError("torch.onnx.export failed for ViTForImageClassification: unsupported op")

    monkeypatch.setattr(onnx_network, "export_network", broken_exporter)
    with caplog.at_level(logging.WARNING, logger="vispect.runtime"):
        assert ImageClassifier.from_pretrained(project_models).runtime == "torch"
    assert "unsupported op" in caplog.text and "Serving it with PyTorch instead" in caplog.text
    with pytest.raises(ModelLoadError, match="ONNX export of .* failed: .*unsupported op.*delete that folder"):
        ImageClassifier.from_pretrained(project_models, runtime="onnx")
    assert calls == [1]  # recorded, not retried at every load


def test_other_directories_are_served_as_they_are(tiny_vit_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VISPECT_CACHE", str(tmp_path / "cache"))
    assert ImageClassifier.from_pretrained(tiny_vit_dir).runtime == "torch"
    assert not (tmp_path / "cache").exists()  # nothing exported for a directory outside models/
