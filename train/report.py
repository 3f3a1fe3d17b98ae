"""Figures and the model card that a training run leaves next to its checkpoint.

Every plot function writes one PNG and returns its path. Figures are drawn with the Agg
backend, so training works on machines without a display.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

# Select the file-only backend before pyplot is imported: training servers have no display.
matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import yaml
from PIL import Image
from sklearn.metrics import confusion_matrix

# The same binning as the ECE, so the bars and the ECE in the title describe the same bins.
from common.calibration import softmax
from common.checkpoint_files import MODEL_CARD_FILE
from train.classification.calibration import confidence_bins, expected_calibration_error

_DPI = 100
# Beyond this many classes the confusion matrix stops growing and its tick labels just get smaller.
_MAX_FIGURE_INCHES = 40.0


def plot_confusion_matrix(
    labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str], path: str | os.PathLike
) -> Path:
    """Row-normalised confusion matrix: row i shows where images of class i ended up.

    Args:
        labels: True class ids of shape ``(n,)``.
        preds: Predicted class ids of shape ``(n,)``.
        class_names: Name of each class id.
        path: The PNG to write.

    Returns:
        The path written.

    Raises:
        ValueError: If the input is empty, the lengths differ or an id has no name.
    """
    labels, preds = np.asarray(labels), np.asarray(preds)
    num_classes = len(class_names)
    if labels.size == 0 or labels.shape != preds.shape:
        raise ValueError(
            f"labels and preds must be non-empty and of equal shape, got {labels.shape} and {preds.shape}."
        )
    if min(labels.min(), preds.min()) < 0 or max(labels.max(), preds.max()) >= num_classes:
        raise ValueError(f"class ids must lie in [0, {num_classes - 1}] to have a name in class_names.")
    counts = confusion_matrix(labels, preds, labels=np.arange(num_classes))
    support = counts.sum(axis=1, keepdims=True)
    # Classes without images keep an all-zero row instead of dividing by zero.
    normalised = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    accuracy = float((labels == preds).mean())

    side = min(_MAX_FIGURE_INCHES, max(5.0, 0.45 * num_classes + 2.5))
    # Text about 40% of a cell high: readable while the figure grows, shrinking once it stops growing.
    cell_points = (side - 2.5) / num_classes * 72
    font_size = float(np.clip(0.4 * cell_points, 3, 10))
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=_DPI)
    try:
        image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
        ticks = np.arange(num_classes)
        ax.set_xticks(ticks, labels=class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=font_size)
        ax.set_yticks(ticks, labels=class_names, fontsize=font_size)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"Confusion matrix (row-normalised), accuracy {accuracy:.1%} on {labels.size} images")
        if num_classes <= 20:
            for (row, col), value in np.ndenumerate(normalised):
                ax.text(
                    col,
                    row,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=font_size,
                    color="white" if value > 0.5 else "black",
                )
        # Rotated class names would otherwise be cut off at the bottom edge.
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_training_curves(log_history: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Loss and accuracy per epoch, training against validation, from ``trainer.state.log_history``.

    Training loss comes from entries with ``"loss"``, validation loss and accuracy from entries with
    ``"eval_loss"`` and ``"eval_accuracy"``. Curves that were never logged (no evaluation, or a run
    shorter than ``logging_steps``) are replaced by a note in their panel.

    Args:
        log_history: ``trainer.state.log_history``.
        path: The PNG to write.

    Returns:
        The path written.
    """
    train_loss = _series(log_history, "loss")
    eval_loss = _series(log_history, "eval_loss")
    eval_accuracy = _series(log_history, "eval_accuracy")
    fig, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=_DPI)
    try:
        _plot_series(loss_ax, [("train", train_loss), ("validation", eval_loss)], "loss")
        _plot_series(accuracy_ax, [("validation", eval_accuracy)], "accuracy")
        fig.suptitle("Training curves")
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_misclassified(
    images: Sequence[Image.Image],
    true_names: Sequence[str],
    pred_names: Sequence[str],
    scores: Sequence[float],
    path: str | os.PathLike,
    max_images: int = 16,
) -> Path:
    """A grid of the most confident mistakes, captioned ``true: X / pred: Y (0.93)``.

    Images whose prediction is right are skipped, so all evaluated images can be passed in.

    Args:
        images: The evaluated images.
        true_names: True class name of each image.
        pred_names: Predicted class name of each image.
        scores: Score of each predicted class; mistakes are shown highest score first.
        path: The PNG to write.
        max_images: At most this many mistakes are shown.

    Returns:
        The path written; a figure saying "no misclassified images" when there are none.

    Raises:
        ValueError: If the four sequences differ in length or ``max_images < 1``.
    """
    lengths = {len(images), len(true_names), len(pred_names), len(scores)}
    if len(lengths) != 1:
        raise ValueError(
            f"images, true_names, pred_names and scores must have equal lengths, got {len(images)}, "
            f"{len(true_names)}, {len(pred_names)} and {len(scores)}."
        )
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}.")
    errors = [i for i, (true, pred) in enumerate(zip(true_names, pred_names)) if true != pred]
    errors = sorted(errors, key=lambda i: -float(scores[i]))[:max_images]
    if not errors:
        fig, ax = plt.subplots(figsize=(5, 2), dpi=_DPI)
        try:
            ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center", fontsize=14)
            ax.axis("off")
            return _save(fig, path)
        finally:
            plt.close(fig)

    columns = min(4, len(errors))
    rows = math.ceil(len(errors) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), dpi=_DPI, squeeze=False)
    try:
        for ax in axes.flat:
            ax.axis("off")
        for ax, i in zip(axes.flat, errors):
            ax.imshow(images[i].convert("RGB"))
            caption = f"true: {true_names[i]} / pred: {pred_names[i]} ({float(scores[i]):.2f})"
            ax.set_title(textwrap.fill(caption, width=30), fontsize=9)
        fig.suptitle(f"Most confident mistakes ({len(errors)} shown)")
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_reliability_diagram(
    probs: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    temperature: float | None = None,
    n_bins: int = 15,
) -> Path:
    """Accuracy against top-1 confidence per bin; a calibrated model follows the diagonal.

    Args:
        probs: Softmax probabilities of shape ``(n, num_classes)``, before temperature scaling.
        labels: True class ids of shape ``(n,)``.
        path: The PNG to write.
        temperature: If given, a second panel shows ``softmax(log(probs) / temperature)``, which
            equals ``softmax(logits / temperature)`` because the log-softmax only shifts the logits.
        n_bins: Number of equal-width confidence bins.

    Returns:
        The path written.

    Raises:
        ValueError: If the input is empty or malformed (see ``expected_calibration_error``).
    """
    probs = np.asarray(probs, dtype=np.float64)
    panels = [("before calibration" if temperature is not None else "uncalibrated", probs)]
    if temperature is not None:
        # Clipping keeps log() finite for probabilities that underflowed to 0.
        calibrated = softmax(np.log(np.clip(probs, 1e-300, 1.0)), temperature)
        panels.append((f"after calibration (T = {temperature:.2f})", calibrated))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), dpi=_DPI, squeeze=False)
    try:
        for ax, (title, panel_probs) in zip(axes.flat, panels):
            _plot_reliability(ax, panel_probs, np.asarray(labels), n_bins, title)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_model_card(
    path: str | os.PathLike,
    *,
    title: str,
    base_model: str,
    dataset: str,
    hyperparameters: dict[str, Any],
    metrics: dict[str, Any],
    class_names: Sequence[str],
    calibration: dict[str, Any] | None,
    intended_use: str,
    limitations: Sequence[str],
    command: str | None,
    task: str = "image-classification",
    postprocessing: str | None = None,
) -> Path:
    """Write a Hugging Face model card (``README.md``) with YAML metadata for the Hub.

    Args:
        path: The file to write, or a directory to write ``README.md`` into.
        title: The card's heading.
        base_model: Hub id or path of the pre-trained model that was fine-tuned.
        dataset: Hub id or path of the training data.
        hyperparameters: Name -> value, shown as a table.
        metrics: Evaluation metric name -> value, shown as a table; names go into the metadata.
        class_names: Class names in id order.
        calibration: The contents of ``calibration.json``, or None for an uncalibrated model.
        intended_use: What the model is for, in a sentence or two.
        limitations: Known limitations, one per bullet.
        command: The command line that reproduces the run, or None if unknown.
        task: ``"image-classification"`` or ``"image-segmentation"``; sets the Hub tag and the wording.
        postprocessing: For a segmenter, what is done to its masks (it has no calibration section).

    Returns:
        The path written.
    """
    if task not in _TASK_WORDS:
        raise ValueError(f"task must be one of {sorted(_TASK_WORDS)}, got {task!r}")
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_CARD_FILE
    metadata = {
        "library_name": "transformers",
        "tags": [task, "vispect"],
        "base_model": base_model,
        "datasets": [dataset],
        "metrics": list(metrics),
    }
    sections = [
        "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---",
        f"# {title}",
        f"## Model description\n\n`{base_model}` fine-tuned for {_TASK_WORDS[task]} into {len(class_names)} classes.",
        f"## Intended use\n\n{intended_use}",
        f"## Training data\n\nDataset: `{dataset}`. Classes, in id order:\n\n"
        + "\n".join(f"{class_id}. {name}" for class_id, name in enumerate(class_names)),
        "## Training procedure\n\n"
        + _markdown_table(("hyper-parameter", "value"), hyperparameters.items())
        + "\n\nTo reproduce:\n\n"
        + (f"```bash\n{command}\n```" if command else "The command line was not recorded."),
        "## Evaluation\n\n" + (_markdown_table(("metric", "value"), metrics.items()) if metrics else "Not evaluated."),
        "## Post-processing\n\n" + (postprocessing or "None.")
        if task == "image-segmentation"
        else "## Calibration and open-set rejection\n\n" + _describe_calibration(calibration),
        "## Limitations\n\n" + ("\n".join(f"- {item}" for item in limitations) or "None recorded."),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path


def set_card_section(card: str | os.PathLike, heading: str, body: str) -> bool:
    """Replace the body of the card's ``## heading`` section, or append the section.

    Used by steps after training (export, refitting) so the card keeps saying how the files
    beside it were made. Returns False (and writes nothing) when there is no card.
    """
    card = Path(card)
    if not card.is_file():
        return False
    text = card.read_text(encoding="utf-8").rstrip("\n") + "\n"
    section = f"## {heading}\n\n{body.strip()}\n"
    match = re.search(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", text, flags=re.M | re.S)
    if match:
        following = "\n" if match.end() < len(text) else ""
        text = text[: match.start()] + section + following + text[match.end() :]
    else:
        text += "\n" + section
    card.write_text(text, encoding="utf-8")
    return True


_TASK_WORDS = {"image-classification": "image classification", "image-segmentation": "semantic segmentation"}


def _describe_calibration(calibration: dict[str, Any] | None) -> str:
    if calibration is not None and set(calibration) == {"multi_label_thresholds"}:
        return (
            "Multi-label: each class gets its own sigmoid score and is reported present when the score "
            "reaches its threshold, fitted per class on the validation split (best F1) and stored in "
            "`calibration.json` next to the weights.\n\n"
            + _markdown_table(("class", "threshold"), calibration["multi_label_thresholds"].items())
        )
    if calibration is None:
        return (
            "Not calibrated: scores are the raw softmax output, which is usually over-confident, "
            "and every image is assigned one of the classes above."
        )
    rows = []
    for key, value in calibration.items():
        if isinstance(value, dict):
            rows.extend((f"{key}.{inner}", inner_value) for inner, inner_value in value.items())
        else:
            rows.append((key, value))
    return (
        "Fitted on the validation split and stored in `calibration.json` next to the weights: "
        "probabilities are `softmax(logits / temperature)`, and an image whose score is below the "
        "rejection threshold is reported as unknown.\n\n" + _markdown_table(("setting", "value"), rows)
    )


def _markdown_table(header: tuple[str, str], rows: Any) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {_cell(name)} | {_cell(value)} |" for name, value in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        # Four significant digits read well for both metrics (0.9532) and learning rates (5e-05).
        text = f"{value:.4g}"
    elif value is None:
        text = "-"
    elif isinstance(value, list | tuple):
        text = ", ".join(_cell(item) for item in value)
    else:
        text = str(value)
    # A "|" inside a cell would end it.
    return text.replace("|", "\\|").replace("\n", " ")


def _series(log_history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(x, y) of every entry logging ``key``; x is the epoch, or the step if the entry has no epoch."""
    points = [(entry.get("epoch", entry.get("step")), entry[key]) for entry in log_history if key in entry]
    points = [(x, y) for x, y in points if x is not None]
    return [float(x) for x, _ in points], [float(y) for _, y in points]


def _plot_series(ax: Any, series: list[tuple[str, tuple[list[float], list[float]]]], metric: str) -> None:
    plotted = False
    for name, (x, y) in series:
        if x:
            ax.plot(x, y, marker="o" if len(x) < 30 else None, label=name)
            plotted = True
    ax.set_title(metric)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    if plotted:
        ax.legend()
        ax.grid(alpha=0.3)
    else:
        ax.text(0.5, 0.5, f"no {metric} logged", ha="center", va="center", transform=ax.transAxes)


def _plot_reliability(ax: Any, probs: np.ndarray, labels: np.ndarray, n_bins: int, title: str) -> None:
    ece = expected_calibration_error(probs, labels, n_bins)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = confidence_bins(confidence, n_bins)
    edges = np.linspace(0, 1, n_bins + 1)
    accuracy = np.array([correct[bins == b].mean() if (bins == b).any() else 0.0 for b in range(n_bins)])
    ax.bar(edges[:-1], accuracy, width=1 / n_bins, align="edge", edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE = {ece:.3f}")
    ax.legend(loc="upper left")


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
