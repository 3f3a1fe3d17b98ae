"""After training: evaluate, calibrate, fit the "unknown" rule and write the report files.

Everything the app's Model tab shows about a trained classifier is written here, next to
the weights: ``eval_results.json``, ``test_results.json``, ``per_class.csv``,
``confusion_matrix.png``, ``training_curves.png``, ``misclassified.png``,
``reliability.png``, ``calibration.json``, ``skipped_images.csv`` and the model card.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from common.calibration import CalibrationRecord, OpenSetRule, softmax
from common.checkpoint_files import (
    CONFUSION_MATRIX_PLOT,
    MISCLASSIFIED_PLOT,
    MODEL_CARD_FILE,
    PER_CLASS_FILE,
    RELIABILITY_PLOT,
    SKIPPED_IMAGES_FILE,
    TRAINING_CURVES_PLOT,
)
from common.image_io import ImageLoadError, load_image
from common.preprocessing import batch_preprocessor
from common.training_progress import CALIBRATING, EVALUATING, WRITING_REPORT
from train import progress, report
from train.classification import calibration, data, metrics


def predict_logits(model, processor, sources: list, batch_size: int = 32) -> np.ndarray:
    """Logits for images outside the Trainer's datasets (the "other" folder)."""
    model.eval()
    preprocess = batch_preprocessor(processor)
    rows = []
    for start in range(0, len(sources), batch_size):
        images = []
        for source in sources[start : start + batch_size]:
            try:
                images.append(load_image(source))
            except ImageLoadError:
                continue  # an unreadable "other" image says nothing about rejection
        if not images:
            continue
        pixel_values = preprocess(images).to(model.device)
        with torch.inference_mode():
            rows.append(model(pixel_values=pixel_values).logits.float().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, model.config.num_labels), dtype=np.float32)


def fit_temperature_without_overreach(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling that does not promise more than the validation set can show.

    When every validation image is right, the likelihood keeps improving as T -> 0 and the
    fitted temperature would make every answer ~100% sure. n correct out of n supports an
    accuracy of about (n + 1) / (n + 2) (Laplace's rule of succession), so the temperature is
    not allowed to push the mean confidence above that.
    """
    temperature = calibration.fit_temperature(logits, labels)
    if (logits.argmax(-1) != labels).any():
        return temperature
    ceiling = (len(labels) + 1) / (len(labels) + 2)
    low, high = math.log(temperature), math.log(100.0)
    if softmax(logits, temperature).max(-1).mean() <= ceiling:
        return temperature
    for _ in range(60):  # mean confidence falls as T grows: bisect on log T
        middle = (low + high) / 2
        if softmax(logits, math.exp(middle)).max(-1).mean() > ceiling:
            low = middle
        else:
            high = middle
    return math.exp(high)


def split_other_images(other_dir: str | None) -> tuple[list[str], list[str]]:
    """(fit, report) image lists: held-apart sub-folders when present, else alternate halves.

    ``calibration/`` + ``holdout/`` (what ``train.datasets parts`` writes) or ``validation/`` +
    ``test/``: the threshold is fitted on the first and reported on the second.
    """
    if not other_dir:
        return [], []
    root = Path(other_dir)
    for fit, held_out in (("calibration", "holdout"), ("validation", "test")):
        if (root / fit).is_dir() and (root / held_out).is_dir():
            return data.load_other_images(root / fit), data.load_other_images(root / held_out)
    files = data.load_other_images(root)
    return files[::2], files[1::2]


def fit_open_set(model, processor, val_logits, temperature, method, other_dir, known_acceptance, test_logits):
    """Fit the rejection threshold on validation; measure it on held-out images."""
    if method == "none":
        return None, {}
    other_fit, other_report = split_other_images(other_dir)
    other_fit_logits = predict_logits(model, processor, other_fit) if other_fit else None
    known_scores = OpenSetRule(method, 0.0).score(val_logits, temperature)
    other_scores = None
    if other_fit_logits is not None and len(other_fit_logits):
        other_scores = OpenSetRule(method, 0.0).score(other_fit_logits, temperature)
    threshold = calibration.fit_rejection_threshold(known_scores, other_scores, known_acceptance)
    rule = OpenSetRule(method, float(threshold))
    # Report on images the threshold never saw when there are any; else say it is in-sample.
    known_report = test_logits if test_logits is not None else val_logits
    other_report_logits = predict_logits(model, processor, other_report) if other_report else other_fit_logits
    rates = {}
    if other_report_logits is not None and len(other_report_logits):
        rates = calibration.rejection_rates(
            rule.score(known_report, temperature), rule.score(other_report_logits, temperature), rule.threshold
        )
    else:
        accepted = float(np.mean(rule.score(known_report, temperature) >= rule.threshold))
        rates = {"known_accepted": accepted, "known_rejected": 1.0 - accepted}
    return rule, {f"open_set_{key}": float(value) for key, value in rates.items()}


def raw_images(split, indices: list[int]):
    """Decoded images of ``split`` rows, bypassing the training transform."""
    plain = split.with_format(None)
    return [load_image(data.image_source(plain[int(i)][data.IMAGE])) for i in indices]


def write_skipped(skipped: list[tuple[str, str]], path: Path) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["image", "reason"])
        writer.writerows(skipped)


def write_report(
    trainer,
    labeled: data.LabeledImages,
    *,
    other_dir,
    rejection_method,
    known_acceptance,
    command,
    hyperparameters,
    dataset,
) -> dict[str, float]:
    """Evaluate on validation (and test), calibrate, and write every report file."""
    out = Path(trainer.args.output_dir)
    model, processor = trainer.model, trainer.processing_class
    names = labeled.label_names

    progress.phase(EVALUATING)
    eval_metrics = trainer.evaluate(labeled.splits["validation"])
    val = trainer.predict(labeled.splits["validation"], metric_key_prefix="eval")
    val_logits, val_labels = _logits(val), np.asarray(val.label_ids)
    test = trainer.predict(labeled.splits["test"], metric_key_prefix="test") if "test" in labeled.splits else None
    test_logits = _logits(test) if test is not None else None

    progress.phase(CALIBRATING)
    record_metrics = {}
    thresholds = None
    if labeled.multi_label:
        thresholds = metrics.tune_thresholds(1 / (1 + np.exp(-val_logits)), val_labels)
        temperature, ece_before, ece_after, rule, open_set = 1.0, None, None, None, {}
    else:
        temperature = fit_temperature_without_overreach(val_logits, val_labels)
        ece_before = calibration.expected_calibration_error(softmax(val_logits), val_labels)
        ece_after = calibration.expected_calibration_error(softmax(val_logits, temperature), val_labels)
        rule, open_set = fit_open_set(
            model, processor, val_logits, temperature, rejection_method, other_dir, known_acceptance, test_logits
        )
        record_metrics = {"temperature": temperature, "ece_before": ece_before, "ece_after": ece_after, **open_set}

    if not trainer.is_world_process_zero():
        return {}

    progress.phase(WRITING_REPORT)
    eval_metrics.update({f"eval_{k}": v for k, v in record_metrics.items()})
    trainer.save_metrics("eval", eval_metrics)
    final = dict(eval_metrics)
    if test is not None:
        test_metrics = dict(test.metrics)
        if thresholds is not None:
            test_metrics.update(
                {f"test_{k}": v for k, v in metrics.multilabel_metrics(test_logits, test.label_ids, thresholds).items()}
            )
        trainer.save_metrics("test", test_metrics)
        final.update(test_metrics)

    CalibrationRecord(
        temperature=float(temperature),
        ece_before=ece_before,
        ece_after=ece_after,
        rejection=rule,
        thresholds=None if thresholds is None else [float(t) for t in thresholds],
    ).save(out)

    report_logits, report_labels = (
        (test_logits, np.asarray(test.label_ids)) if test is not None else (val_logits, val_labels)
    )
    report_split = labeled.splits["test" if test is not None else "validation"]
    id2label = dict(enumerate(names))
    if labeled.multi_label:
        rows = metrics.per_class_multilabel_table(report_logits, report_labels, id2label, thresholds)
    else:
        rows = metrics.per_class_table(report_logits, report_labels, id2label)
        predicted = report_logits.argmax(-1)
        report.plot_confusion_matrix(report_labels, predicted, names, out / CONFUSION_MATRIX_PLOT)
        _plot_worst_errors(report_split, report_logits, report_labels, names, temperature, out / MISCLASSIFIED_PLOT)
        report.plot_reliability_diagram(
            softmax(val_logits), val_labels, out / RELIABILITY_PLOT, temperature=temperature
        )
    metrics.write_per_class_csv(rows, out / PER_CLASS_FILE)
    report.plot_training_curves(trainer.state.log_history, out / TRAINING_CURVES_PLOT)
    write_skipped(labeled.skipped, out / SKIPPED_IMAGES_FILE)
    report.write_model_card(
        out / MODEL_CARD_FILE,
        title=f"{Path(out).name}: image classifier ({len(names)} classes)",
        base_model=str(hyperparameters.get("model_name_or_path")),
        dataset=str(dataset),
        hyperparameters=hyperparameters,
        metrics={k: v for k, v in final.items() if isinstance(v, (int, float))},
        class_names=names,
        calibration={"multi_label_thresholds": dict(zip(names, map(float, thresholds), strict=True))}
        if labeled.multi_label
        else {
            "temperature": temperature,
            "ece_before": ece_before,
            "ece_after": ece_after,
            **open_set,
            **({"rejection": rule.to_dict()} if rule else {}),
        },
        intended_use=f"Classify images into: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}.",
        limitations=[
            "Trained and evaluated only on the data named above; expect lower accuracy on images that look different.",
            ("Thresholds" if labeled.multi_label else "Confidences")
            + " are fitted on the validation split; refit them after a change of camera or lighting.",
        ],
        command=command,
    )
    return final


def _logits(prediction) -> np.ndarray:
    logits = prediction.predictions
    return np.asarray(logits[0] if isinstance(logits, tuple) else logits, dtype=np.float32)


def _plot_worst_errors(split, logits, labels, names, temperature, path, limit: int = 16) -> None:
    probabilities = softmax(logits, temperature)
    predicted = probabilities.argmax(-1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-probabilities[wrong, predicted[wrong]])][:limit]
    report.plot_misclassified(
        raw_images(split, worst.tolist()),
        [names[int(labels[i])] for i in worst],
        [names[int(predicted[i])] for i in worst],
        [float(probabilities[i, predicted[i]]) for i in worst],
        path,
        max_images=limit,
    )
