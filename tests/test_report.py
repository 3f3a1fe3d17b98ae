"""Training report figures and the model card."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from common.calibration import softmax
from train.report import (
    plot_confusion_matrix,
    plot_misclassified,
    plot_reliability_diagram,
    plot_training_curves,
    set_card_section,
    write_model_card,
)

CLASS_NAMES = ["gear", "hex nut", "washer"]

LOG_HISTORY = [
    {"loss": 1.2, "learning_rate": 5e-5, "epoch": 0.5, "step": 10},
    {"loss": 0.9, "learning_rate": 4e-5, "epoch": 1.0, "step": 20},
    {"eval_loss": 0.95, "eval_accuracy": 0.61, "epoch": 1.0, "step": 20},
    {"loss": 0.5, "learning_rate": 2e-5, "epoch": 1.5, "step": 30},
    {"loss": 0.4, "learning_rate": 1e-5, "epoch": 2.0, "step": 40},
    {"eval_loss": 0.7, "eval_accuracy": 0.78, "epoch": 2.0, "step": 40},
    {"train_runtime": 12.3, "train_loss": 0.75, "epoch": 2.0, "step": 40},
]


def _open_png(path) -> Image.Image:
    assert path.stat().st_size > 1000
    image = Image.open(path)
    assert image.format == "PNG"
    return image


def test_confusion_matrix_png_depends_on_the_predictions(tmp_path):
    labels = np.array([0, 0, 1, 1, 2, 2])
    right = plot_confusion_matrix(labels, labels, CLASS_NAMES, tmp_path / "right.png")
    wrong = plot_confusion_matrix(labels, np.array([1, 0, 2, 1, 0, 2]), CLASS_NAMES, tmp_path / "wrong.png")
    assert _open_png(right).size == _open_png(wrong).size
    assert min(Image.open(right).size) >= 400
    assert right.read_bytes() != wrong.read_bytes()


def test_confusion_matrix_scales_to_many_classes(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"defect type {i}" for i in range(30)]
    labels = rng.integers(0, 30, 300)
    small = _open_png(plot_confusion_matrix(np.array([0, 1, 2]), np.array([0, 1, 1]), CLASS_NAMES, tmp_path / "3.png"))
    big = _open_png(plot_confusion_matrix(labels, rng.integers(0, 30, 300), names, tmp_path / "30.png"))
    assert big.size[0] > 2 * small.size[0]  # the figure grows with the class count so names stay readable
    with pytest.raises(ValueError, match="class_names"):
        plot_confusion_matrix(np.array([0, 3]), np.array([0, 1]), CLASS_NAMES, tmp_path / "bad.png")


def test_training_curves_with_and_without_evaluation(tmp_path):
    full = _open_png(plot_training_curves(LOG_HISTORY, tmp_path / "full.png"))
    assert full.size == (1100, 400)
    train_only = [entry for entry in LOG_HISTORY if "eval_loss" not in entry]
    _open_png(plot_training_curves(train_only, tmp_path / "train_only.png"))
    _open_png(plot_training_curves([], tmp_path / "empty.png"))
    assert (tmp_path / "full.png").read_bytes() != (tmp_path / "train_only.png").read_bytes()


def test_misclassified_grid_and_empty_case(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(6)]
    images[0] = images[0].convert("L")  # grayscale inputs must not break the grid
    true_names = ["gear", "gear", "washer", "hex nut", "washer", "gear"]
    pred_names = ["washer", "gear", "gear", "washer", "washer", "hex nut"]
    scores = [0.93, 0.99, 0.51, 0.77, 0.88, 0.64]
    grid = _open_png(plot_misclassified(images, true_names, pred_names, scores, tmp_path / "errors.png"))
    assert grid.size == (1280, 360)  # four mistakes: one row of four
    capped = _open_png(plot_misclassified(images, true_names, pred_names, scores, tmp_path / "two.png", max_images=2))
    assert capped.size == (640, 360)
    none = _open_png(plot_misclassified(images, true_names, true_names, scores, tmp_path / "none.png"))
    assert none.size == (500, 200)
    with pytest.raises(ValueError, match="equal lengths"):
        plot_misclassified(images, true_names[:2], pred_names, scores, tmp_path / "bad.png")


def test_reliability_diagram_before_and_after(tmp_path):
    rng = np.random.default_rng(0)
    logits = 4 * rng.normal(size=(300, 4))
    labels = rng.integers(0, 4, 300)
    one = _open_png(plot_reliability_diagram(softmax(logits), labels, tmp_path / "one.png"))
    two = _open_png(plot_reliability_diagram(softmax(logits), labels, tmp_path / "two.png", temperature=4.0))
    assert one.size == (500, 500)
    assert two.size == (1000, 500)


def _read_card(path):
    text = path.read_text()
    assert text.startswith("---\n")
    front_matter, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front_matter), body


def test_model_card_has_metadata_metrics_and_sections(tmp_path):
    path = write_model_card(
        tmp_path,
        title="Fastener classifier",
        base_model="google/vit-base-patch16-224",
        dataset="data/fasteners",
        hyperparameters={"learning_rate": 5e-5, "num_train_epochs": 3, "seed": 42},
        metrics={"accuracy": 0.9375, "f1_macro": 0.91234},
        class_names=["gear", "hex | nut", "washer"],
        calibration={
            "temperature": 1.734,
            "ece_before": 0.081,
            "ece_after": 0.019,
            "rejection": {"method": "max_softmax", "threshold": 0.42},
            "multi_label_thresholds": None,
        },
        intended_use="Sorting fasteners on the assembly line.",
        limitations=["Trained on studio photos only.", "Three classes."],
        command="python -m train.classification.train --output_dir out",
    )
    assert path == tmp_path / "README.md"
    metadata, body = _read_card(path)
    assert metadata["library_name"] == "transformers"
    assert metadata["tags"] == ["image-classification", "vispect"]
    assert metadata["base_model"] == "google/vit-base-patch16-224"
    assert metadata["datasets"] == ["data/fasteners"]
    assert metadata["metrics"] == ["accuracy", "f1_macro"]
    assert "| accuracy | 0.9375 |" in body
    assert "| f1_macro | 0.9123 |" in body
    assert "| learning_rate | 5e-05 |" in body
    assert "| temperature | 1.734 |" in body
    assert "| rejection.threshold | 0.42 |" in body
    assert "hex | nut" in body  # the class list is not a table, so no escaping there
    assert "python -m train.classification.train --output_dir out" in body
    assert "- Trained on studio photos only." in body
    headings = [line for line in body.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Model description",
        "## Intended use",
        "## Training data",
        "## Training procedure",
        "## Evaluation",
        "## Calibration and open-set rejection",
        "## Limitations",
    ]


def _card(tmp_path, **overrides):
    arguments = dict(
        title="t",
        base_model="b0",
        dataset="data/steel",
        hyperparameters={},
        metrics={"eval_mean_dice": 0.9},
        class_names=["background", "pitting"],
        calibration=None,
        intended_use="Testing.",
        limitations=[],
        command=None,
    )
    return write_model_card(tmp_path, **{**arguments, **overrides})


def test_model_card_without_calibration_or_command(tmp_path):
    metadata, body = _read_card(_card(tmp_path / "card.md", metrics={"accuracy": 0.5}))
    assert metadata["metrics"] == ["accuracy"]
    assert "Not calibrated" in body
    assert "not recorded" in body


def test_segmentation_card_is_tagged_and_describes_post_processing_not_calibration(tmp_path):
    path = _card(tmp_path, task="image-segmentation", postprocessing="Regions under 200 px are dropped.")
    metadata, body = _read_card(path)
    assert metadata["tags"] == ["image-segmentation", "vispect"]
    assert "fine-tuned for semantic segmentation into 2 classes" in body
    assert "## Post-processing\n\nRegions under 200 px are dropped." in body
    assert "Calibration" not in body and "softmax" not in body


def test_unknown_task_is_refused(tmp_path):
    with pytest.raises(ValueError, match="image-segmentation"):
        _card(tmp_path, task="detection")


def test_multi_label_card_lists_each_class_threshold(tmp_path):
    _, body = _read_card(_card(tmp_path, calibration={"multi_label_thresholds": {"pitting": 0.2, "crazing": 0.5}}))
    assert "| pitting | 0.2 |" in body and "| crazing | 0.5 |" in body
    assert "Not calibrated" not in body


def test_set_card_section_replaces_in_place_or_appends(tmp_path):
    path = _card(tmp_path)
    assert set_card_section(path, "Evaluation", "Measured again: 0.95.")
    assert set_card_section(path, "Export", "Cast to float16.")
    assert set_card_section(path, "Export", "Cast to bfloat16.")
    _, body = _read_card(path)
    headings = [line for line in body.splitlines() if line.startswith("## ")]
    assert headings[-3:] == ["## Calibration and open-set rejection", "## Limitations", "## Export"]
    assert "Measured again: 0.95.\n\n## Calibration" in body and "eval_mean_dice | 0.9" not in body
    assert body.rstrip().endswith("Cast to bfloat16.") and "float16." not in body.replace("bfloat16.", "")
    assert not set_card_section(tmp_path / "missing.md", "Export", "x")
