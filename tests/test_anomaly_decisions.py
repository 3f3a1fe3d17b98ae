"""Anomaly scores -> inspection-log decisions: the answer at the line used, its scores, flags and model."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.anomaly_threshold import false_reject_rate
from common.checkpoint_files import MEMORY_BANK_FILE, WEIGHTS_FILE
from pipelines.anomaly_detection import AnomalyDetector, AnomalyResult
from pipelines.anomaly_detection.predict import region_outline
from pipelines.decisions import ANOMALY_MARGIN, anomaly_decision
from tests.test_anomaly_detection import train_args, write_strips
from train.anomaly_detection import train as anomaly_train


@pytest.fixture(scope="module")
def detector(tmp_path_factory, tiny_timm_dir):
    root = tmp_path_factory.mktemp("anomaly-decisions")
    write_strips(root / "strips", 10, seed=0)
    assert anomaly_train.main(train_args(root / "strips", root / "detector", tiny_timm_dir)) == 0
    return AnomalyDetector.from_pretrained(root / "detector")


@pytest.fixture
def png():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def result_with(detector: AnomalyDetector, score: float) -> AnomalyResult:
    """A result scoring ``score`` (normalised) whose map is the score in the top-left quarter, 0.1 elsewhere."""
    heat = np.full((8, 8), 0.1, np.float32)
    heat[:4, :4] = score  # PatchCore: the image scores as its worst patch
    region = heat > 1.0
    threshold = detector.config.products[detector.products[0]].threshold
    return AnomalyResult(
        product=detector.products[0],
        score=score,
        anomalous=score > 1.0,
        anomaly_map=heat,
        region=region,
        outline=region_outline(region),
        raw_score=score * threshold,
        threshold=threshold,
    )


def test_an_anomalous_image_is_recorded_as_defective_with_its_scores_and_model(detector, png):
    result = result_with(detector, 1.84)
    decision = anomaly_decision(result, detector, png, channel="anomaly", file_name="strip.png")
    assert decision.task == "anomaly" and decision.channel == "anomaly" and decision.file_name == "strip.png"
    assert decision.answer == "anomalous" and decision.defective is True and decision.flags == ("defective",)
    assert decision.image_sha256 == hashlib.sha256(png).hexdigest()
    assert decision.scores == {
        "product": "strips",
        "score": pytest.approx(1.84),
        "raw_score": pytest.approx(result.raw_score),
        "area": 0.25,
    }
    assert decision.thresholds["threshold"] == 1.0 and decision.thresholds["low_confidence_margin"] == ANOMALY_MARGIN
    assert decision.thresholds["raw_threshold"] == pytest.approx(result.threshold)
    assert decision.thresholds["held_out_false_reject_rate"] == 0.0  # the fitted line rejects none of the 3
    assert decision.model_source == detector.source
    # The fingerprint is the memory bank's bytes followed by the backbone's weights.
    bank, backbone = detector.weight_files()
    assert bank == Path(detector.source) / MEMORY_BANK_FILE and backbone.name == WEIGHTS_FILE
    both = hashlib.sha256(bank.read_bytes() + backbone.read_bytes()).hexdigest()
    assert decision.model_fingerprint == both


def test_a_good_image_far_from_the_line_waits_for_nobody(detector, png):
    decision = anomaly_decision(result_with(detector, 0.4), detector, png, channel="api")
    assert decision.answer == "good" and decision.defective is False and decision.flags == ()
    assert decision.scores["area"] == 0.0  # the map's peak, 0.4, is under the line


@pytest.mark.parametrize(
    ("score", "flags"),
    [(1.05, ("defective", "low_confidence")), (0.95, ("low_confidence",)), (1.11, ("defective",)), (0.89, ())],
)
def test_a_score_within_ten_percent_of_the_line_is_low_confidence(detector, png, score, flags):
    assert anomaly_decision(result_with(detector, score), detector, png, channel="api").flags == flags


def test_a_moved_threshold_changes_the_answer_the_area_and_the_recorded_line(detector, png):
    result = result_with(detector, 1.84)
    stricter = anomaly_decision(result, detector, png, channel="anomaly", threshold=2.5)
    assert stricter.answer == "good" and stricter.flags == () and stricter.scores["area"] == 0.0
    assert stricter.thresholds["threshold"] == 2.5
    assert stricter.thresholds["raw_threshold"] == pytest.approx(2.5 * result.threshold)
    # Near the moved line, not the fitted one, is what counts as unsure.
    assert anomaly_decision(result, detector, png, channel="anomaly", threshold=1.9).flags == ("low_confidence",)
    looser = anomaly_decision(result, detector, png, channel="anomaly", threshold=0.05)
    assert looser.answer == "anomalous" and looser.scores["area"] == 1.0  # even the 0.1 background is above 0.05
    held_out = detector.held_out_scores()
    expected = false_reject_rate(held_out, 0.05 * result.threshold)
    assert looser.thresholds["held_out_false_reject_rate"] == expected == 1.0
