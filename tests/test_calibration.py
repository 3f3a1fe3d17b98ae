"""Temperature scaling, calibration error, open-set thresholds and calibration.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import logsumexp

from common.calibration import CalibrationRecord, OpenSetRule, energy_score, softmax
from train.classification.calibration import (
    expected_calibration_error,
    fit_rejection_threshold,
    fit_temperature,
    rejection_rates,
)


@pytest.fixture(scope="module")
def calibrated_validation():
    """Logits and labels drawn from softmax(logits), so the logits are calibrated by construction."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(3000, 5))
    cumulative = softmax(logits).cumsum(axis=1)
    labels = (rng.random((3000, 1)) > cumulative).sum(axis=1)
    return logits, np.minimum(labels, 4)


def test_temperature_softens_over_confident_logits(calibrated_validation):
    logits, labels = calibrated_validation
    over_confident = 4 * logits
    temperature = fit_temperature(over_confident, labels)
    assert temperature > 1
    assert temperature == pytest.approx(4, rel=0.15)
    ece_before = expected_calibration_error(softmax(over_confident), labels)
    ece_after = expected_calibration_error(softmax(over_confident, temperature), labels)
    assert ece_after < ece_before / 3


def test_temperature_of_calibrated_logits_is_about_one(calibrated_validation):
    logits, labels = calibrated_validation
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.15)


def test_fit_temperature_refuses_empty_and_mismatched_input():
    with pytest.raises(ValueError, match="at least one validation example"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="labels must have shape"):
        fit_temperature(np.zeros((4, 3)), np.zeros(3, dtype=int))


def test_expected_calibration_error_matches_hand_computation():
    # Ten images at confidence 0.9 with half of them right: one bin, |0.5 - 0.9| = 0.4.
    probs = np.tile([0.9, 0.1], (10, 1))
    labels = np.array([0, 1] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)


def test_softmax_and_energy_score_with_temperature():
    logits = np.array([[1000.0, 999.0, 990.0], [0.0, 0.0, 0.0]])
    probs = softmax(logits, temperature=2.0)
    assert probs.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert probs[1] == pytest.approx([1 / 3] * 3)
    assert np.isfinite(probs).all()
    assert energy_score(logits, 2.0) == pytest.approx(2.0 * logsumexp(logits / 2.0, axis=1))
    # A peaked image scores higher (more "known") than a flat one of the same scale.
    assert energy_score(np.array([5.0, 0.0, 0.0])) > energy_score(np.array([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="temperature"):
        softmax(logits, temperature=0.0)


def test_rejection_threshold_without_others_accepts_the_requested_share():
    known = np.random.default_rng(0).normal(size=1000)
    threshold = fit_rejection_threshold(known, known_acceptance=0.95)
    rates = rejection_rates(known, None, threshold)
    assert 0.95 <= rates["known_accepted"] <= 0.96
    assert rates["known_rejected"] == pytest.approx(1 - rates["known_accepted"])
    assert rates["other_rejected"] is None


def test_rejection_threshold_with_separable_others_rejects_them():
    rng = np.random.default_rng(1)
    known, other = rng.normal(3.0, 1.0, 500), rng.normal(-3.0, 1.0, 500)
    threshold = fit_rejection_threshold(known, other)
    rates = rejection_rates(known, other, threshold)
    assert rates["other_rejected"] > 0.9
    assert rates["known_accepted"] > 0.9


def test_rejection_threshold_never_accepts_fewer_than_80_percent_of_known():
    # Youden's J is t below 0.5 and 1 - t above: alone it would pick 0.5 and accept half the known images.
    rng = np.random.default_rng(2)
    known, other = rng.uniform(0.0, 1.0, 2000), rng.uniform(0.0, 0.5, 2000)
    threshold = fit_rejection_threshold(known, other)
    assert 0.8 <= rejection_rates(known, other, threshold)["known_accepted"] < 0.82


def test_rejection_threshold_refuses_empty_scores():
    with pytest.raises(ValueError, match="known_scores is empty"):
        fit_rejection_threshold(np.array([]))
    with pytest.raises(ValueError, match="other_scores is empty"):
        fit_rejection_threshold(np.array([1.0]), np.array([]))


def test_open_set_rule_scores_and_round_trips():
    logits = np.array([[4.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    by_softmax = OpenSetRule("max_softmax", 0.5).score(logits, temperature=2.0)
    assert by_softmax == pytest.approx(softmax(logits, 2.0).max(axis=1))
    assert OpenSetRule("energy", 1.0).score(logits, 2.0) == pytest.approx(energy_score(logits, 2.0))
    rule = OpenSetRule("energy", np.float32(1.5))
    assert OpenSetRule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    with pytest.raises(ValueError, match="max_softmax"):
        OpenSetRule("entropy", 0.5)


def test_calibration_record_round_trips(tmp_path):
    record = CalibrationRecord(
        temperature=1.7,
        ece_before=0.08,
        ece_after=0.02,
        rejection=OpenSetRule("max_softmax", 0.42),
        thresholds=[0.35, 0.6],
    )
    path = record.save(tmp_path / "checkpoint")
    assert path.name == "calibration.json"
    assert json.loads(path.read_text()) == {
        "temperature": 1.7,
        "ece_before": 0.08,
        "ece_after": 0.02,
        "rejection": {"method": "max_softmax", "threshold": 0.42},
        "multi_label_thresholds": [0.35, 0.6],
    }
    assert CalibrationRecord.load(tmp_path / "checkpoint") == record


def test_calibration_record_without_rule_or_measured_error(tmp_path):
    record = CalibrationRecord(
        temperature=1.0, ece_before=math.nan, ece_after=math.nan, rejection=None, thresholds=None
    )
    record.save(tmp_path)
    data = json.loads((tmp_path / "calibration.json").read_text())
    assert data["ece_before"] is None and data["rejection"] is None and data["multi_label_thresholds"] is None
    loaded = CalibrationRecord.load(tmp_path)
    assert loaded.rejection is None and loaded.thresholds is None and math.isnan(loaded.ece_after)


def test_missing_calibration_file_means_uncalibrated(tmp_path):
    assert CalibrationRecord.load(tmp_path) is None


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"temperature": 1.5, "multi_label_thresholds": "0.5"}',
        '{"temperature": "warm"}',
        '{"temperature": -1, "ece_before": null, "ece_after": null, "rejection": null, "multi_label_thresholds": null}',
        '{"temperature": 1, "ece_before": 0, "ece_after": 0, "rejection": {"method": "x", "threshold": 1}, '
        '"multi_label_thresholds": null}',
        "[1, 2]",
    ],
)
def test_malformed_calibration_file_error_names_the_file(tmp_path, content):
    (tmp_path / "calibration.json").write_text(content)
    with pytest.raises(ValueError, match="calibration.json"):
        CalibrationRecord.load(tmp_path)


def test_a_partial_calibration_file_means_neutral_values_for_the_rest(tmp_path):
    # A hand-written stage-1 file often holds only its per-class thresholds.
    (tmp_path / "calibration.json").write_text('{"multi_label_thresholds": [0.3, 0.7]}')
    record = CalibrationRecord.load(tmp_path)
    assert record.thresholds == [0.3, 0.7] and record.temperature == 1.0 and record.rejection is None
    assert not record.calibrated
