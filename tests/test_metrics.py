"""Metrics for training: hand-computed cases, threshold tuning and offline evaluation."""

from __future__ import annotations

import csv
import socket

import numpy as np
import pytest
from transformers import EvalPrediction

from train.classification.metrics import (
    classification_metrics,
    compute_metrics_fn,
    multilabel_metrics,
    per_class_multilabel_table,
    per_class_table,
    tune_thresholds,
    write_per_class_csv,
)

NAMES = {0: "gear", 1: "hex nut", 2: "washer"}


def _one_hot_logits(preds: list[int], num_classes: int) -> np.ndarray:
    """Logits whose argmax is ``preds``."""
    logits = np.zeros((len(preds), num_classes))
    logits[np.arange(len(preds)), preds] = 5.0
    return logits


def test_perfect_single_label_predictions_score_one_everywhere():
    labels = np.arange(7).repeat(3)
    metrics = classification_metrics(_one_hot_logits(list(labels), 7), labels)
    assert set(metrics) == {
        "accuracy",
        "top5_accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "precision_weighted",
        "recall_weighted",
        "f1_weighted",
    }
    assert metrics == pytest.approx(dict.fromkeys(metrics, 1.0))


def test_perfect_multi_label_predictions_score_one_everywhere():
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    metrics = multilabel_metrics(np.where(labels == 1, 4.0, -4.0), labels)
    assert metrics == pytest.approx({"f1_micro": 1.0, "f1_macro": 1.0, "mAP": 1.0, "subset_accuracy": 1.0})


def test_macro_and_weighted_averages_match_hand_computation():
    # Class 0: 4 images, all right, plus one image of class 1 called class 0 -> P 4/5, R 1, F1 8/9.
    # Class 1: 2 images, one right -> P 1, R 1/2, F1 2/3.
    labels = np.array([0, 0, 0, 0, 1, 1])
    metrics = classification_metrics(_one_hot_logits([0, 0, 0, 0, 0, 1], 2), labels)
    assert metrics["accuracy"] == pytest.approx(5 / 6)
    assert metrics["precision_macro"] == pytest.approx((4 / 5 + 1) / 2)
    assert metrics["recall_macro"] == pytest.approx((1 + 1 / 2) / 2)
    assert metrics["f1_macro"] == pytest.approx((8 / 9 + 2 / 3) / 2)
    assert metrics["f1_weighted"] == pytest.approx((4 * 8 / 9 + 2 * 2 / 3) / 6)
    assert metrics["f1_macro"] < metrics["f1_weighted"]
    assert "top5_accuracy" not in metrics  # only 2 classes: top-5 would be trivially 1


def test_top_k_accuracy_counts_the_true_class_in_second_place():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, 40)
    logits = rng.normal(size=(40, 8))
    # The true class always comes second: top-1 misses it, top-3 finds it.
    logits[np.arange(40), labels] = 10.0
    logits[np.arange(40), (labels + 1) % 8] = 20.0
    metrics = classification_metrics(logits, labels, top_k=3)
    assert metrics["accuracy"] == 0.0
    assert metrics["top3_accuracy"] == 1.0
    assert "top5_accuracy" not in metrics


def test_per_class_table_names_the_most_frequent_confusion():
    # gear: 2x called washer, 1x hex nut; hex nut: always right; washer: 1x called gear.
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    preds = [2, 2, 1, 0, 1, 1, 0, 2]
    rows = per_class_table(_one_hot_logits(preds, 3), labels, NAMES)
    assert [row["label"] for row in rows] == ["gear", "hex nut", "washer"]
    assert [row["support"] for row in rows] == [4, 2, 2]
    assert (rows[0]["confused_with"], rows[0]["confused_count"]) == ("washer", 2)
    assert rows[1]["confused_with"] is None
    assert rows[2]["confused_with"] == "gear"
    assert rows[0]["recall"] == pytest.approx(1 / 4)
    assert rows[1]["precision"] == pytest.approx(2 / 3)


def test_per_class_table_accepts_string_ids_and_rejects_missing_names():
    labels = np.array([0, 1, 2])
    rows = per_class_table(_one_hot_logits([0, 1, 2], 3), labels, {"0": "a", "1": "b", "2": "c"})
    assert [row["label"] for row in rows] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="id2label"):
        per_class_table(_one_hot_logits([0, 1, 2], 3), labels, {0: "a", 1: "b"})


def test_write_per_class_csv_round_trips(tmp_path):
    labels = np.array([0, 0, 1, 2])
    rows = per_class_table(_one_hot_logits([0, 1, 1, 2], 3), labels, NAMES)
    path = write_per_class_csv(rows, tmp_path / "eval" / "per_class.csv")
    with path.open(newline="") as file:
        read = list(csv.DictReader(file))
    assert [row["label"] for row in read] == ["gear", "hex nut", "washer"]
    assert read[0]["confused_with"] == "hex nut"
    assert read[1]["confused_with"] == ""
    with pytest.raises(ValueError, match="no rows"):
        write_per_class_csv([], tmp_path / "empty.csv")


def test_tune_thresholds_finds_the_separating_threshold():
    labels = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    # Class 0 separates anywhere in (0.4, 0.7]; class 1 only below 0.5, so 0.5 predicts nothing;
    # class 2 has no positives and keeps 0.5.
    probs = np.array([[0.7, 0.3, 0.2], [0.8, 0.35, 0.2], [0.4, 0.1, 0.1], [0.1, 0.15, 0.3]])
    thresholds = tune_thresholds(probs, labels)
    assert 0.4 < thresholds[0] <= 0.7
    assert 0.15 < thresholds[1] <= 0.3
    assert thresholds[2] == 0.5
    logits = np.log(probs / (1 - probs))
    assert multilabel_metrics(logits, labels)["f1_macro"] < 1.0
    assert multilabel_metrics(logits, labels, thresholds)["f1_macro"] == pytest.approx(1.0)


def test_tune_thresholds_rejects_logits():
    with pytest.raises(ValueError, match="sigmoid"):
        tune_thresholds(np.array([[3.0, -2.0]]), np.array([[1, 0]]))


def test_map_is_one_for_perfect_ranking_even_with_bad_thresholds():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    # Every positive outranks every negative of its class, but all probabilities are below 0.5.
    logits = np.where(labels == 1, -0.5, -3.0)
    metrics = multilabel_metrics(logits, labels)
    assert metrics["mAP"] == pytest.approx(1.0)  # class 2 has no positives and is left out
    assert metrics["f1_micro"] == 0.0

    rng = np.random.default_rng(1)
    random = multilabel_metrics(rng.normal(size=(60, 5)), rng.integers(0, 2, (60, 5)))
    assert 0.0 <= random["mAP"] <= 1.0
    assert random["mAP"] < 1.0


def test_per_class_multilabel_table_reports_thresholds_and_average_precision():
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    rows = per_class_multilabel_table(
        np.array([[2.0, -1.0], [-2.0, 1.0], [1.0, -1.0]]), labels, {0: "scratch", 1: "dent"}, np.array([0.3, 0.6])
    )
    assert rows[0] == pytest.approx(
        {
            "label": "scratch",
            "support": 2,
            "precision": 1.0,
            "recall": 1.0,
            "f1": 1.0,
            "average_precision": 1.0,
            "threshold": 0.3,
        }
    )
    # "dent" has no positives: one false alarm (sigmoid(1) > 0.6), no average precision.
    assert rows[1]["support"] == 0
    assert rows[1]["average_precision"] is None
    assert rows[1]["threshold"] == 0.6


def test_compute_metrics_fn_takes_eval_predictions_with_tuple_outputs():
    labels = np.array([0, 1, 2, 2])
    logits = _one_hot_logits([0, 1, 2, 0], 3)
    single = compute_metrics_fn("single_label_classification")
    hidden_states = np.zeros((4, 2, 8))
    metrics = single(EvalPrediction(predictions=(logits, hidden_states), label_ids=labels))
    assert metrics == classification_metrics(logits, labels)
    assert metrics["accuracy"] == 0.75

    multi = compute_metrics_fn("multi_label_classification")
    multi_hot = np.array([[1.0, 0.0], [0.0, 1.0]])
    metrics = multi(EvalPrediction(predictions=np.array([[3.0, -3.0], [-3.0, 3.0]]), label_ids=multi_hot))
    assert metrics["subset_accuracy"] == pytest.approx(1.0)

    with pytest.raises(ValueError, match="problem_type"):
        compute_metrics_fn("regression")


def test_bad_shapes_are_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="labels must have shape"):
        classification_metrics(np.zeros((4, 3)), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match=r"in \[0, 2\]"):
        classification_metrics(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="n > 0"):
        classification_metrics(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="thresholds"):
        multilabel_metrics(np.zeros((2, 3)), np.zeros((2, 3)), thresholds=np.array([0.5, 0.5]))


def test_metrics_compute_without_any_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"metrics tried to use the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    labels = np.array([0, 1, 1])
    assert classification_metrics(_one_hot_logits([0, 1, 0], 2), labels)["accuracy"] == pytest.approx(2 / 3)
    assert multilabel_metrics(np.array([[1.0, -1.0]]), np.array([[1, 0]]))["f1_micro"] == 1.0
