"""Evaluation metrics for image classification, offline.

The headline numbers go through the ``evaluate`` API, but with metrics defined in this
module (``evaluate.Metric`` subclasses instantiated directly) rather than
``evaluate.load("accuracy")``, which downloads a metric script from the Hub and so fails
on machines without network. scikit-learn does the arithmetic behind them. The metrics
keep their inputs in memory (``keep_in_memory=True``): no Arrow cache files, no file locks.

Single-label inputs are logits of shape ``(n, num_classes)`` and integer labels of shape
``(n,)``; multi-label inputs are logits and multi-hot labels, both ``(n, num_classes)``.

Example:
    >>> import numpy as np
    >>> logits = np.array([[2.0, 0.1, 0.0], [0.0, 3.0, 0.2]])
    >>> classification_metrics(logits, np.array([0, 1]))["accuracy"]
    1.0
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_recall_fscore_support

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")
DEFAULT_THRESHOLD_GRID = np.linspace(0.05, 0.95, 19)

_CITATION = """\
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


class _SingleLabelClassification(evaluate.Metric):
    """Accuracy, top-k accuracy and macro/weighted precision, recall and F1 from logits."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Single-label classification metrics computed from logits with scikit-learn.",
            citation=_CITATION,
            inputs_description="predictions: logits (n, num_classes); references: class ids (n,); top_k: int.",
            features=datasets.Features(
                {
                    # float64 so the arrow round trip cannot create ties that the model's logits do not have.
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, top_k: int = 5) -> dict[str, float]:
        logits = np.asarray(predictions, dtype=np.float64)
        labels = np.asarray(references, dtype=np.int64)
        preds = logits.argmax(axis=1)
        results = {"accuracy": float(accuracy_score(labels, preds))}
        # Top-k of k >= num_classes is always 1.0 and says nothing, so it is left out.
        if logits.shape[1] > top_k:
            results[f"top{top_k}_accuracy"] = _top_k_accuracy(logits, labels, top_k)
        # Averages run over the classes present in labels or predictions (scikit-learn's default):
        # a class absent from a small evaluation set would otherwise count as F1 = 0.
        for average in ("macro", "weighted"):
            precision, recall, f1, _ = precision_recall_fscore_support(labels, preds, average=average, zero_division=0)
            results[f"precision_{average}"] = float(precision)
            results[f"recall_{average}"] = float(recall)
            results[f"f1_{average}"] = float(f1)
        return results


class _MultiLabelClassification(evaluate.Metric):
    """Micro/macro F1, mAP and subset accuracy from multi-label logits."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Multi-label classification metrics computed from logits with scikit-learn.",
            citation=_CITATION,
            inputs_description=(
                "predictions: logits (n, num_classes); references: multi-hot labels (n, num_classes); "
                "thresholds: per-class probability thresholds (num_classes,)."
            ),
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    # float because transformers' multi-label models take float targets (BCE loss).
                    "references": datasets.Sequence(datasets.Value("float32")),
                }
            ),
        )

    def _compute(self, predictions, references, thresholds: np.ndarray) -> dict[str, float]:
        probs = _sigmoid(np.asarray(predictions, dtype=np.float64))
        truth = np.asarray(references) >= 0.5
        predicted = probs >= thresholds
        # Like the single-label averages, macro F1 skips classes that are neither labelled nor
        # predicted; their F1 is undefined, not zero.
        active = np.flatnonzero(truth.any(axis=0) | predicted.any(axis=0))
        return {
            "f1_micro": float(f1_score(truth, predicted, average="micro", zero_division=0)),
            "f1_macro": (
                float(f1_score(truth, predicted, average="macro", labels=active, zero_division=0))
                if active.size
                else 0.0
            ),
            "mAP": _mean_average_precision(probs, truth),
            "subset_accuracy": float(accuracy_score(truth, predicted)),
        }


def classification_metrics(logits: np.ndarray, labels: np.ndarray, top_k: int = 5) -> dict[str, float]:
    """Single-label metrics: accuracy, top-k accuracy, macro and weighted precision/recall/F1.

    Args:
        logits: Scores of shape ``(n, num_classes)``; logits or probabilities (only the ranking matters).
        labels: True class ids of shape ``(n,)``.
        top_k: The k of ``top{k}_accuracy``, reported only when there are more than k classes.

    Returns:
        ``accuracy``, ``top{k}_accuracy`` (when ``num_classes > top_k``), ``precision_macro``,
        ``recall_macro``, ``f1_macro``, ``precision_weighted``, ``recall_weighted``, ``f1_weighted``.
        Precision and recall of a class with no predictions or no examples count as 0.

    Raises:
        ValueError: If the shapes disagree, the input is empty, a label is out of range or ``top_k < 1``.
    """
    logits, labels = _check_single_label(logits, labels)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    metric = _SingleLabelClassification(keep_in_memory=True)
    return metric.compute(predictions=logits, references=labels, top_k=top_k)


def multilabel_metrics(
    logits: np.ndarray, labels_multi_hot: np.ndarray, thresholds: np.ndarray | None = None
) -> dict[str, float]:
    """Multi-label metrics on sigmoid probabilities cut at per-class thresholds.

    Args:
        logits: Logits of shape ``(n, num_classes)``.
        labels_multi_hot: 0/1 targets of shape ``(n, num_classes)``.
        thresholds: A class is predicted when its probability is >= its threshold. One value per
            class (e.g. from ``tune_thresholds``), a scalar, or None for 0.5.

    Returns:
        ``f1_micro``, ``f1_macro`` (over classes labelled or predicted at least once), ``mAP``
        (macro average precision over classes with at least one positive; NaN if there is none)
        and ``subset_accuracy`` (every class of an image right).

    Raises:
        ValueError: If the shapes disagree, the input is empty or a threshold is outside [0, 1].
    """
    logits, labels_multi_hot = _check_multi_label(logits, labels_multi_hot)
    thresholds = _check_thresholds(thresholds, logits.shape[1])
    metric = _MultiLabelClassification(keep_in_memory=True)
    return metric.compute(predictions=logits, references=labels_multi_hot, thresholds=thresholds)


def per_class_table(logits: np.ndarray, labels: np.ndarray, id2label: dict[int, str]) -> list[dict[str, Any]]:
    """One row per class of a single-label classifier, with its most frequent confusion.

    Args:
        logits: Scores of shape ``(n, num_classes)``.
        labels: True class ids of shape ``(n,)``.
        id2label: Class names by id, as in a transformers config; must cover every column of ``logits``.

    Returns:
        Rows in class-id order with ``label``, ``support``, ``precision``, ``recall``, ``f1``,
        ``confused_with`` (the name of the class this one is most often mistaken for, None when it
        never is; ties go to the lower class id) and ``confused_count``.

    Raises:
        ValueError: If the shapes disagree or ``id2label`` does not match the number of classes.
    """
    logits, labels = _check_single_label(logits, labels)
    names = _class_names(id2label, logits.shape[1])
    class_ids = np.arange(len(names))
    preds = logits.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=class_ids, average=None, zero_division=0
    )
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    np.fill_diagonal(confusion, 0)
    rows = []
    for class_id, name in enumerate(names):
        worst = int(confusion[class_id].argmax())
        count = int(confusion[class_id, worst])
        rows.append(
            {
                **_class_scores(name, class_id, precision, recall, f1, support),
                "confused_with": names[worst] if count else None,
                "confused_count": count,
            }
        )
    return rows


def per_class_multilabel_table(
    logits: np.ndarray,
    labels_multi_hot: np.ndarray,
    id2label: dict[int, str],
    thresholds: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One row per class of a multi-label classifier.

    Args:
        logits: Logits of shape ``(n, num_classes)``.
        labels_multi_hot: 0/1 targets of shape ``(n, num_classes)``.
        id2label: Class names by id; must cover every column of ``logits``.
        thresholds: Per-class probability thresholds, a scalar, or None for 0.5.

    Returns:
        Rows in class-id order with ``label``, ``support`` (positives), ``precision``, ``recall``,
        ``f1``, ``average_precision`` (None for a class without positives) and ``threshold``.

    Raises:
        ValueError: If the shapes disagree or ``id2label`` does not match the number of classes.
    """
    logits, labels_multi_hot = _check_multi_label(logits, labels_multi_hot)
    names = _class_names(id2label, logits.shape[1])
    thresholds = _check_thresholds(thresholds, logits.shape[1])
    probs = _sigmoid(logits)
    truth = labels_multi_hot >= 0.5
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, probs >= thresholds, average=None, zero_division=0
    )
    rows = []
    for class_id, name in enumerate(names):
        has_positives = bool(truth[:, class_id].any())
        rows.append(
            {
                **_class_scores(name, class_id, precision, recall, f1, support),
                "average_precision": (
                    float(average_precision_score(truth[:, class_id], probs[:, class_id])) if has_positives else None
                ),
                "threshold": float(thresholds[class_id]),
            }
        )
    return rows


def _class_scores(name: str, class_id: int, precision, recall, f1, support) -> dict[str, Any]:
    """The columns every per-class row has, from scikit-learn's per-class arrays."""
    return {
        "label": name,
        "support": int(support[class_id]),
        "precision": float(precision[class_id]),
        "recall": float(recall[class_id]),
        "f1": float(f1[class_id]),
    }


def write_per_class_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write the rows of ``per_class_table`` or ``per_class_multilabel_table`` as CSV.

    Args:
        rows: Dicts with the same keys; the first row's keys become the header.
        path: The CSV file to write; parent directories are created.

    Returns:
        The path written.

    Raises:
        ValueError: If ``rows`` is empty (there would be no header).
    """
    if not rows:
        raise ValueError("write_per_class_csv got no rows; build them with per_class_table first.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def tune_thresholds(
    probs: np.ndarray, labels_multi_hot: np.ndarray, grid: np.ndarray = DEFAULT_THRESHOLD_GRID
) -> np.ndarray:
    """Per-class probability thresholds that maximise each class's F1 on validation data.

    Among thresholds with the same best F1 the middle one is kept, so a perfectly separated
    class gets a threshold inside the gap between its scores rather than at its edge.

    Args:
        probs: Sigmoid probabilities of shape ``(n, num_classes)``.
        labels_multi_hot: 0/1 targets of shape ``(n, num_classes)``.
        grid: Candidate thresholds in [0, 1].

    Returns:
        One threshold per class; 0.5 for classes without positives, whose F1 is 0 at any threshold.

    Raises:
        ValueError: If the shapes disagree, ``probs`` are not probabilities or ``grid`` is empty or outside [0, 1].
    """
    probs, labels_multi_hot = _check_multi_label(probs, labels_multi_hot)
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError("tune_thresholds takes probabilities in [0, 1]; pass sigmoid(logits), not logits.")
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or grid.min() < 0 or grid.max() > 1:
        raise ValueError(f"grid must be a non-empty 1-D array of thresholds in [0, 1], got {grid!r}.")
    truth = (labels_multi_hot >= 0.5)[:, :, None]
    predicted = probs[:, :, None] >= grid[None, None, :]
    true_pos = (predicted & truth).sum(axis=0)
    false_pos = (predicted & ~truth).sum(axis=0)
    false_neg = (~predicted & truth).sum(axis=0)
    denominator = 2 * true_pos + false_pos + false_neg
    f1 = np.divide(2 * true_pos, denominator, out=np.zeros(denominator.shape), where=denominator > 0)
    thresholds = np.full(probs.shape[1], 0.5)
    for class_id in np.flatnonzero(truth[:, :, 0].any(axis=0)):
        best = np.flatnonzero(f1[class_id] == f1[class_id].max())
        thresholds[class_id] = grid[best[len(best) // 2]]
    return thresholds


def compute_metrics_fn(problem_type: str, top_k: int = 5) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for the transformers ``Trainer``.

    Args:
        problem_type: ``"single_label_classification"`` or ``"multi_label_classification"``,
            as in ``PretrainedConfig.problem_type``.
        top_k: The k of ``top{k}_accuracy`` for single-label problems.

    Returns:
        A function taking an ``EvalPrediction`` and returning ``classification_metrics`` or
        ``multilabel_metrics`` (at threshold 0.5).

    Raises:
        ValueError: If ``problem_type`` is not one of the two above.
    """
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}.")
    return functools.partial(_compute_metrics, problem_type=problem_type, top_k=top_k)


def _compute_metrics(eval_prediction: Any, *, problem_type: str, top_k: int) -> dict[str, float]:
    predictions = eval_prediction.predictions
    # Models that return more than logits (hidden states, attentions) give the Trainer a tuple; logits come first.
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    if problem_type == "multi_label_classification":
        return multilabel_metrics(predictions, eval_prediction.label_ids)
    return classification_metrics(predictions, eval_prediction.label_ids, top_k=top_k)


def _top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    # A stable sort makes ties go to the lower class id, as argmax does for top-1.
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def _mean_average_precision(probs: np.ndarray, truth: np.ndarray) -> float:
    # Average precision is undefined for a class without positives; scikit-learn would warn and return 0.
    with_positives = np.flatnonzero(truth.any(axis=0))
    if with_positives.size == 0:
        return float("nan")
    return float(np.mean([average_precision_score(truth[:, c], probs[:, c]) for c in with_positives]))


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # Written with exp(-|x|) so large logits of either sign do not overflow.
    exp = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1 / (1 + exp), exp / (1 + exp))


def _check_single_label(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape (n, num_classes) with n > 0, got {logits.shape}.")
    if labels.shape != (logits.shape[0],):
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) to match logits {logits.shape}, got {labels.shape}; "
            "multi-hot labels need multilabel_metrics."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}.")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(
            f"labels must be class ids in [0, {logits.shape[1] - 1}], got values from {labels.min()} to {labels.max()}."
        )
    return logits, labels.astype(np.int64)


def _check_multi_label(scores: np.ndarray, labels_multi_hot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels_multi_hot = np.asarray(labels_multi_hot, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"scores must have shape (n, num_classes) with n > 0, got {scores.shape}.")
    if labels_multi_hot.shape != scores.shape:
        raise ValueError(
            f"labels_multi_hot must have the shape of the scores {scores.shape}, got {labels_multi_hot.shape}."
        )
    return scores, labels_multi_hot


def _check_thresholds(thresholds: np.ndarray | float | None, num_classes: int) -> np.ndarray:
    if thresholds is None:
        thresholds = 0.5
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape not in {(), (num_classes,)}:
        raise ValueError(f"thresholds must be a scalar or have shape ({num_classes},), got {thresholds.shape}.")
    thresholds = np.broadcast_to(thresholds, (num_classes,)).copy()
    if thresholds.min() < 0 or thresholds.max() > 1:
        raise ValueError(f"thresholds are probabilities and must lie in [0, 1], got {thresholds}.")
    return thresholds


def _class_names(id2label: dict[int, str], num_classes: int) -> list[str]:
    # Configs read back from JSON by hand have string keys ("0"); transformers converts them to int.
    by_id = {int(class_id): name for class_id, name in id2label.items()}
    if sorted(by_id) != list(range(num_classes)):
        raise ValueError(
            f"id2label must name classes 0..{num_classes - 1} to match the logits, got ids {sorted(by_id)}."
        )
    return [by_id[class_id] for class_id in range(num_classes)]
