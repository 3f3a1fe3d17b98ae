"""Fitting the segmenter's post-processing on validation: stage-1 clearing and minimum areas.

The rules themselves are ``common.segmentation_rules``'s (the pipeline applies the same ones);
the scores are ``common.segmentation_scores``'s.
"""

from __future__ import annotations

import numpy as np

from common.checkpoint_files import CONFIG_FILE, MIN_AREA_KEY, MIN_AREA_TWO_STAGE_KEY
from common.segmentation_rules import drop_classes, dropped, store_min_areas
from common.segmentation_scores import IGNORE_INDEX, dice_per_pair


def clear_ruled_out(predicted: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``predicted`` with each class set to background in the images where ``present`` says it is absent.

    Args:
        predicted: class-index maps ``(N, H, W)``.
        present: ``(N, num_classes - 1)`` booleans, e.g. a stage-1 classifier's verdicts.
    """
    return drop_classes(predicted, [0] * present.shape[1], ~np.asarray(present, dtype=bool))


# Pixel counts tried for each class's minimum area (Severstal winners tuned these per class
# on validation to clear small false positives on clean images).
MIN_AREA_CANDIDATES = (0, 50, 100, 200, 400, 800, 1200, 1600, 2400, 3200, 4800, 6400, 8000, 10000, 12800)


def fit_min_areas(
    predicted: np.ndarray, truth: np.ndarray, num_classes: int, candidates: tuple[int, ...] = MIN_AREA_CANDIDATES
) -> tuple[dict[int, int], np.ndarray]:
    """Per defect class, the minimum area (pixels) that maximises its mean Severstal Dice.

    A class whose predicted area in an image is below its minimum is cleared there, which
    turns a wrong small mask on an image without that class from 0 into 1 and a right small
    mask into 0. Classes are independent (each pixel has one class), so each is fitted alone;
    ties go to the smaller minimum.

    Returns:
        ``({class id: pixels}, Dice per (image, class) pair after clearing)``.
    """
    dice = dice_per_pair(predicted, truth, num_classes)
    scored = truth != IGNORE_INDEX
    fitted, best_dice = {}, dice.copy()
    for c in range(1, num_classes):
        area = ((predicted == c) & scored).reshape(len(truth), -1).sum(1)
        truth_empty = ~((truth == c) & scored).reshape(len(truth), -1).any(1)
        best = None
        for pixels in candidates:
            cleared = dropped(area, pixels)
            column = np.where(cleared, truth_empty.astype(float), dice[:, c - 1])
            if best is None or column.mean() > best[1] + 1e-12:
                best = (pixels, column.mean(), column)
        fitted[c] = int(best[0])
        best_dice[:, c - 1] = best[2]
    return fitted, best_dice


def record_min_areas(
    model, predicted: np.ndarray, truth: np.ndarray, id2label: dict[int, str], with_stage1: bool = False
) -> dict[str, float]:
    """Fit per-class minimum areas on validation maps and record them in the model's config.

    ``with_stage1`` says the maps had the classes ruled out by stage 1 cleared already, so the
    set is the two-stage one (``common.segmentation_rules.min_area_key``); the pipeline applies
    the set that matches how it runs. Returns mean Dice before and after.
    """
    fitted, dice = fit_min_areas(predicted, truth, len(id2label))
    areas = {id2label[c]: pixels for c, pixels in fitted.items()}
    store_min_areas(model.config, areas, with_stage1)
    before = dice_per_pair(predicted, truth, len(id2label)).mean()
    return {"mean_dice_before": float(before), "mean_dice_after": float(dice.mean()), **areas}


def describe_min_areas(tuned: dict | None, two_stage: dict | None = None, stage1: str | None = None) -> str:
    """The model card's post-processing text for the minimum areas ``record_min_areas`` fitted.

    ``two_stage`` is the set fitted with the stage-1 classifier ``stage1``, if one was.
    """
    if not tuned:
        return "No minimum areas were fitted: every predicted region is kept."
    text = (
        "Per defect class, regions smaller than a minimum area (pixels at the image's resolution) are "
        "dropped; the areas were fitted on the validation split to maximise mean Dice and are stored "
        f"as `{MIN_AREA_KEY}` in `{CONFIG_FILE}`, where the pipeline and the app read them. Mean Dice on "
        f"validation went from {tuned['mean_dice_before']:.4f} to {tuned['mean_dice_after']:.4f}.\n\n"
        + _area_lines(tuned)
    )
    if two_stage:
        text += (
            f"\n\nWith a stage-1 classifier the pipeline uses `{MIN_AREA_TWO_STAGE_KEY}` instead, fitted the same "
            f"way after clearing the classes that `{stage1}` rules out; two-stage mean Dice on validation "
            f"went from {two_stage['mean_dice_before']:.4f} to {two_stage['mean_dice_after']:.4f}.\n\n"
            + _area_lines(two_stage)
        )
    return text


def _area_lines(tuned: dict) -> str:
    return "\n".join(f"- {name}: {pixels} px" for name, pixels in tuned.items() if not name.startswith("mean_dice"))
