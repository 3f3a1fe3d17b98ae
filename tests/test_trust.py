"""calibration.json written by training changes what the pipeline answers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from common.calibration import CalibrationRecord, OpenSetRule
from common.checkpoints import ModelLoadError
from pipelines.classification import ImageClassifier
from ui.classify import verdict_text


@pytest.fixture
def checkpoint(tiny_vit_dir, tmp_path):
    return shutil.copytree(tiny_vit_dir, tmp_path / "model")


def _write(checkpoint, **record):
    base = {"temperature": 1.0, "ece_before": 0.1, "ece_after": 0.02, "rejection": None, "multi_label_thresholds": None}
    (checkpoint / "calibration.json").write_text(json.dumps({**base, **record}))


def test_temperature_softens_the_scores(checkpoint, photo_file):
    plain = ImageClassifier.from_pretrained(checkpoint).classify(photo_file, top_k=3)
    _write(checkpoint, temperature=4.0)
    classifier = ImageClassifier.from_pretrained(checkpoint)
    scaled = classifier.classify(photo_file, top_k=3)
    assert [p.index for p in scaled.predictions] == [p.index for p in plain.predictions]  # ranking unchanged
    logits = torch.log(torch.tensor([p.score for p in plain.predictions]))
    expected = (logits / 4.0).softmax(-1)  # all 3 classes shown, so the softmax over them is exact
    assert [p.score for p in scaled.predictions] == pytest.approx(expected.tolist(), rel=1e-4)
    assert "calibrated" in verdict_text(scaled, classifier.trust)


@pytest.mark.parametrize("method", ["max_softmax", "energy"])
def test_rejection_threshold_answers_unknown(checkpoint, photo_file, method):
    _write(checkpoint, rejection={"method": method, "threshold": 1e6})  # nothing can reach it
    classifier = ImageClassifier.from_pretrained(checkpoint)
    result = classifier.classify(photo_file)
    assert result.unknown and result.threshold == 1e6 and result.open_set_score < 1e6
    assert verdict_text(result, classifier.trust).startswith("Unknown")

    _write(checkpoint, rejection={"method": method, "threshold": -1e6})  # everything passes
    assert not ImageClassifier.from_pretrained(checkpoint).classify(photo_file).unknown


def test_energy_score_matches_its_definition():
    trust = CalibrationRecord(2.0, 0.1, 0.02, rejection=OpenSetRule("energy", 0.0), thresholds=None)
    logits = np.array([[1.0, 3.0, -2.0]])
    expected = 2.0 * np.log(np.exp(0.5) + np.exp(1.5) + np.exp(-1.0))
    assert trust.open_set_score(logits).item() == pytest.approx(expected, rel=1e-6)
    assert not trust.is_unknown(logits)[0]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "malformed"),
        (json.dumps({"temperature": -1}), "positive"),
        (json.dumps({"temperature": 1, "rejection": {"method": "vibes", "threshold": 1}}), "unknown rejection method"),
    ],
)
def test_a_broken_calibration_file_is_named(checkpoint, content, message):
    (checkpoint / "calibration.json").write_text(content)
    with pytest.raises(ModelLoadError, match=f"calibration.json.*{message}|{message}.*calibration.json"):
        ImageClassifier.from_pretrained(checkpoint)


def test_no_calibration_file_means_raw_scores(checkpoint):
    trust = ImageClassifier.from_pretrained(checkpoint).trust
    assert trust == CalibrationRecord.uncalibrated() and not trust.calibrated
