"""Pipeline results -> inspection-log decisions: answers, scores, flags and model fingerprints."""

from __future__ import annotations

import hashlib
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from common.calibration import CalibrationRecord, OpenSetRule
from common.checkpoint_files import WEIGHTS_FILE
from pipelines import fingerprints
from pipelines.classification import Classification, ImageClassifier, Prediction
from pipelines.decisions import classification_decision, segmentation_decision
from pipelines.fingerprints import model_fingerprint
from pipelines.segmentation import DefectSegmenter
from tests.conftest import save_tiny_stage1, tiny_segformer_config

DEFECTS = {0: "background", 1: "pitting", 2: "scratches"}


@pytest.fixture(scope="module")
def segmenter_dirs(tmp_path_factory):
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    segmenter = tmp_path_factory.mktemp("segformer")
    SegformerForSemanticSegmentation(tiny_segformer_config(DEFECTS)).save_pretrained(segmenter)
    SegformerImageProcessor().save_pretrained(segmenter)
    stage1 = save_tiny_stage1(tmp_path_factory.mktemp("stage1"), ["pitting", "scratches"], [5.0, 5.0])
    return segmenter, stage1


@pytest.fixture
def png():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_classification_is_recorded_with_its_model_and_flags(tiny_vit_dir, png):
    classifier = ImageClassifier.from_pretrained(tiny_vit_dir, runtime="torch")
    result = classifier.classify(png, top_k=3)
    decision = classification_decision(result, classifier, png, channel="classify", file_name="part.png")
    assert decision.task == "classify" and decision.channel == "classify" and decision.file_name == "part.png"
    assert decision.image_sha256 == hashlib.sha256(png).hexdigest()
    assert decision.answer == result.predictions[0].label
    assert decision.scores == {p.label: pytest.approx(p.score) for p in result.predictions}
    assert decision.model_source == str(tiny_vit_dir)
    assert decision.model_fingerprint == hashlib.sha256((tiny_vit_dir / WEIGHTS_FILE).read_bytes()).hexdigest()
    # A random 3-class model is never sure: its top score is below one half.
    assert decision.flags == ("low_confidence",) and decision.thresholds["low_confidence"] == 0.5
    assert decision.thresholds["temperature"] == 1.0
    assert classification_decision(result, classifier, png, channel="api", low_confidence=0.0).flags == ()


def test_unknown_and_a_disagreeing_second_model_are_flagged(tiny_vit_dir, png):
    classifier = ImageClassifier.from_pretrained(tiny_vit_dir, runtime="torch")
    sure = Classification([Prediction("gear", 0.97, 0)], unknown=True, open_set_score=0.1, threshold=0.3)
    other = Classification([Prediction("washer", 0.9, 2)])
    decision = classification_decision(sure, classifier, png, channel="api", other=other)
    assert decision.flags == ("unknown", "disagree") and decision.unknown
    assert "rejection" not in decision.thresholds  # the tiny model has no calibration.json
    agreeing = Classification([Prediction("gear", 0.8, 0)])
    assert classification_decision(sure, classifier, png, channel="api", other=agreeing).flags == ("unknown",)


def test_the_open_set_rule_is_recorded_with_the_images_score(tiny_vit_dir, tmp_path, png):
    calibrated = tmp_path / "calibrated"
    shutil.copytree(tiny_vit_dir, calibrated)
    CalibrationRecord(1.5, 0.2, 0.05, OpenSetRule("max_softmax", 0.9), None).save(calibrated)
    classifier = ImageClassifier.from_pretrained(calibrated, runtime="torch")
    result = classifier.classify(png)
    decision = classification_decision(result, classifier, png, channel="classify")
    assert decision.unknown and decision.flags == ("unknown", "low_confidence")
    rejection = decision.thresholds["rejection"]
    assert rejection["method"] == "max_softmax" and rejection["threshold"] == 0.9
    assert rejection["score"] == pytest.approx(result.open_set_score) and decision.thresholds["temperature"] == 1.5


def test_the_fingerprint_is_computed_once_per_model_and_is_the_rest_apis(tiny_vit_dir, tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_vit_dir, checkpoint)
    classifier = ImageClassifier.from_pretrained(checkpoint, runtime="torch")
    expected = hashlib.sha256((checkpoint / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert model_fingerprint(classifier) == expected
    monkeypatch.setattr(fingerprints.hashlib, "sha256", None)  # a second hash would fail
    assert model_fingerprint(classifier) == expected
    # The weights in memory decided, so replacing the file does not change the loaded model's fingerprint...
    # (replaced, not rewritten in place: the loaded weights are memory-mapped from the old file)
    (checkpoint / "retrained.safetensors").write_bytes(b"new weights!")
    (checkpoint / "retrained.safetensors").replace(checkpoint / WEIGHTS_FILE)
    assert model_fingerprint(classifier) == expected
    monkeypatch.undo()
    # ...while a model loaded afterwards is a new object, hashed anew.
    reloaded = ImageClassifier.from_pretrained(tiny_vit_dir, runtime="torch")
    reloaded.model.config._name_or_path = str(checkpoint)
    assert model_fingerprint(reloaded) == hashlib.sha256(b"new weights!").hexdigest()
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    decision = classification_decision(classifier.classify(png.getvalue()), classifier, png.getvalue(), channel="api")
    assert decision.model_fingerprint == expected  # the log's string is the one the REST API answers with


def _logits(painted_class: int | None, size=(16, 16)) -> torch.Tensor:
    """(C, H, W) logits: background everywhere, or ``painted_class`` in the top-left quarter."""
    logits = torch.zeros(len(DEFECTS), *size)
    logits[0] = 5.0
    if painted_class is not None:
        logits[painted_class, : size[0] // 2, : size[1] // 2] = 10.0
    return logits


def test_a_segmentation_is_recorded_with_areas_and_the_stage1_verdict(segmenter_dirs, png):
    segmenter = DefectSegmenter.from_pretrained(segmenter_dirs[0], stage1=segmenter_dirs[1], runtime="torch")
    result = segmenter.postprocess(_logits(1), min_area=0, stage1_probabilities=[0.9, 0.01])
    decision = segmentation_decision(result, segmenter, png, channel="segment", min_area=0)
    assert decision.task == "segment" and decision.answer == "defective: pitting" and decision.defective
    assert decision.flags == ("defective",)
    assert decision.scores["pitting"]["area"] == pytest.approx(0.25)
    assert decision.scores["scratches"] == {"area": 0.0, "confidence": 0.0, "stage1": pytest.approx(0.01)}
    assert decision.thresholds["min_area"] == {"pitting": 0, "scratches": 0}
    assert set(decision.thresholds["stage1"]) == {"pitting", "scratches"}
    assert decision.model_source == f"{segmenter_dirs[0]} + {segmenter_dirs[1]}"
    weights = [hashlib.sha256((d / WEIGHTS_FILE).read_bytes()).hexdigest() for d in segmenter_dirs]
    assert decision.model_fingerprint == "+".join(weights)


def test_stage1_and_the_segmenter_disagreeing_is_flagged(segmenter_dirs, png):
    segmenter = DefectSegmenter.from_pretrained(segmenter_dirs[0], stage1=segmenter_dirs[1], runtime="torch")
    # Stage 1 says pitting is there; the segmenter paints nothing.
    result = segmenter.postprocess(_logits(None), min_area=0, stage1_probabilities=[0.9, 0.01])
    decision = segmentation_decision(result, segmenter, png, channel="segment")
    assert decision.answer == "clean" and decision.defective is False
    # ...and a clean answer with stage 1 at 0.9 for pitting is an unsure one (confidence 1 - 0.9).
    assert decision.flags == ("low_confidence", "disagree") and decision.confidence == pytest.approx(0.1)
    # The segmenter alone paints scratches, which stage 1 ruled out: seen only with the probabilities kept.
    painted = _logits(2)
    for keep in (False, True):
        result = segmenter.postprocess(
            painted, min_area=0, stage1_probabilities=[0.01, 0.01], return_probabilities=keep
        )
        flags = segmentation_decision(result, segmenter, png, channel="segment").flags
        assert flags == (("disagree",) if keep else ())


def test_without_stage1_only_defects_are_flagged(segmenter_dirs, png):
    segmenter = DefectSegmenter.from_pretrained(segmenter_dirs[0], runtime="torch")
    decision = segmentation_decision(segmenter.postprocess(_logits(2), min_area=0), segmenter, png, channel="api")
    assert decision.flags == ("defective",) and "stage1" not in decision.thresholds
    assert decision.model_source == str(segmenter_dirs[0])
    assert decision.confidence is not None


def test_an_unsure_clean_strip_is_flagged_at_the_callers_confidence(segmenter_dirs, png):
    # Nothing painted, stage 1 rules both types out but gives pitting 0.3: the answer "clean" is
    # 70% sure, as the Inspect tab shows it (defect_confidence); its slider decides the flag.
    segmenter = DefectSegmenter.from_pretrained(segmenter_dirs[0], stage1=segmenter_dirs[1], runtime="torch")
    result = segmenter.postprocess(_logits(None), min_area=0, stage1_probabilities=[0.3, 0.01])
    assert all(region.ruled_out for region in result.regions)
    relaxed = segmentation_decision(result, segmenter, png, channel="inspect")
    strict = segmentation_decision(result, segmenter, png, channel="inspect", low_confidence=0.8)
    assert relaxed.confidence == pytest.approx(0.7) and relaxed.flags == ()
    assert strict.flags == ("low_confidence",) and strict.thresholds["low_confidence"] == 0.8
