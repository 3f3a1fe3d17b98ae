"""Post-processing of a defect segmenter: stage-1 ruling-out and per-class minimum areas.

Training fits these rules on validation (``train.segmentation``) and inference applies them
(``pipelines.segmentation``); both go through this module, so a rule scored on validation is
the rule that is served:

- **Stage 1** is a multi-label classifier with one output per defect class. A class whose
  stage-1 probability is below its threshold (``calibration.json``'s
  ``multi_label_thresholds``, else ``DEFAULT_STAGE1_THRESHOLD``) is *ruled out* for that image.
- **Minimum areas** (pixels per class, in ``config.json``): a class painted on fewer pixels than
  its minimum is cleared from that image, as the Severstal winners did per class to cut false
  positives on clean strips. ``min_area`` is fitted for the segmenter alone and
  ``min_area_two_stage`` for the two-stage pipeline, whose stage 1 already removed most false
  alarms; the served set is the one that matches how the segmenter runs.

A class is dropped from an image when it is ruled out or below its minimum area
(:func:`drop_classes`); dropped pixels become background.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.checkpoint_files import MIN_AREA_KEY, MIN_AREA_TWO_STAGE_KEY

DEFAULT_STAGE1_THRESHOLD = 0.5  # for a stage 1 without fitted per-class thresholds


class Stage1MismatchError(ValueError):
    """A stage-1 classifier does not fit the segmenter; the message names both and the fix."""


def min_area_key(with_stage1: bool) -> str:
    """The ``config.json`` key of the minimum areas fitted for this way of running."""
    return MIN_AREA_TWO_STAGE_KEY if with_stage1 else MIN_AREA_KEY


def stored_min_areas(config, with_stage1: bool) -> tuple[dict, str | None]:
    """The minimum areas to serve from a model config, and the key they came from.

    With a stage 1 attached the two-stage set applies when the config has one; otherwise, and as
    the fallback, the segmenter-alone set. ``({}, None)`` when neither was fitted.
    """
    keys = (MIN_AREA_TWO_STAGE_KEY, MIN_AREA_KEY) if with_stage1 else (MIN_AREA_KEY,)
    for key in keys:
        areas = dict(getattr(config, key, None) or {})
        if areas:
            return areas, key
    return {}, None


def all_stored_min_areas(config) -> dict[str, dict]:
    """Every minimum-area set in a model config, by key (for checking and copying them)."""
    return {
        key: dict(getattr(config, key)) for key in (MIN_AREA_KEY, MIN_AREA_TWO_STAGE_KEY) if getattr(config, key, None)
    }


def store_min_areas(config, areas: dict[str, int], with_stage1: bool) -> str:
    """Record fitted minimum areas (``{label: pixels}``) in a model config; returns the key used."""
    key = min_area_key(with_stage1)
    setattr(config, key, {label: int(pixels) for label, pixels in areas.items()})
    return key


def forget_min_areas(config) -> None:
    """Remove both sets: they belong to the weights they were fitted on."""
    for key in (MIN_AREA_KEY, MIN_AREA_TWO_STAGE_KEY):
        if hasattr(config, key):
            delattr(config, key)


def stage1_columns(
    problem_type: str | None,
    stage1_labels: Sequence[str],
    defect_labels: Sequence[str],
    thresholds: Sequence[float] | None,
    *,
    stage1_name: str,
    segmenter_name: str,
) -> tuple[list[int], list[float]]:
    """Match a stage-1 classifier to a segmenter's defect classes.

    Args:
        problem_type: The stage-1 config's ``problem_type``; it must be multi-label.
        stage1_labels: The stage-1 classifier's labels, in output order.
        defect_labels: The segmenter's defect labels (``id2label[1:]``), in class order.
        thresholds: Stage 1's fitted per-output thresholds, or None for the default.
        stage1_name, segmenter_name: How to name the two models in an error.

    Returns:
        For each defect class 1..C-1: the stage-1 output index with its label, and its threshold.

    Raises:
        Stage1MismatchError: Stage 1 is single-label, the labels differ, or the thresholds do not
            match the outputs.
    """
    if problem_type != "multi_label_classification":
        raise Stage1MismatchError(
            f"Stage-1 classifier '{stage1_name}' is single-label (softmax), so it cannot say that "
            "several defect types are present. Train it with --problem_type multi_label."
        )
    if sorted(stage1_labels) != sorted(defect_labels):
        raise Stage1MismatchError(
            f"Stage-1 classifier '{stage1_name}' has labels {list(stage1_labels)}, but segmentation model "
            f"'{segmenter_name}' has defect labels {list(defect_labels)} (id2label[1:]). Train stage 1 on the same "
            "defect classes, with the same names."
        )
    if thresholds is not None and len(thresholds) != len(stage1_labels):
        raise Stage1MismatchError(
            f"Stage-1 classifier '{stage1_name}' has {len(thresholds)} multi_label_thresholds in its "
            f"calibration.json for {len(stage1_labels)} labels; recalibrate it or delete calibration.json."
        )
    index = {label: i for i, label in enumerate(stage1_labels)}
    columns = [index[label] for label in defect_labels]
    return columns, [float(thresholds[c]) if thresholds else DEFAULT_STAGE1_THRESHOLD for c in columns]


def ruled_out(probabilities: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Booleans, same shape as ``probabilities`` (``(..., defect classes)``): stage 1 says absent."""
    return np.asarray(probabilities) < np.asarray(thresholds, dtype=np.float64)


def dropped(areas: np.ndarray, min_areas: Sequence[int] | np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
    """Which painted classes are dropped: ruled out, or painted on fewer pixels than their minimum.

    Args:
        areas: Painted pixels per defect class, ``(..., defect classes)``.
        min_areas: Minimum pixels per defect class (broadcast against ``areas``).
        excluded: Booleans like ``areas``: ruled out by stage 1; None for none.
    """
    areas = np.asarray(areas)
    small = areas < np.asarray(min_areas)
    if excluded is not None:
        small = small | np.asarray(excluded, dtype=bool)
    return (areas > 0) & small


def drop_classes(label_maps: np.ndarray, min_areas: Sequence[int], excluded: np.ndarray | None = None) -> np.ndarray:
    """Class-index maps with the :func:`dropped` classes set to background (a new array).

    Args:
        label_maps: ``(H, W)`` or ``(N, H, W)`` class indices; 0 is background.
        min_areas: Minimum pixels per defect class 1..C-1 (index 0 is class 1).
        excluded: ``(C-1,)`` or ``(N, C-1)`` booleans, ruled out by stage 1; None for none.
    """
    maps = np.array(label_maps, copy=True)
    single = maps.ndim == 2
    if single:
        maps = maps[None]
    num_defects = len(min_areas)
    flat = maps.reshape(len(maps), -1)
    areas = np.stack([np.bincount(row, minlength=num_defects + 1)[1 : num_defects + 1] for row in flat])
    if excluded is not None:
        excluded = np.broadcast_to(np.asarray(excluded, dtype=bool), areas.shape)
    drop = dropped(areas, min_areas, excluded)
    for image, classes in zip(maps, drop):
        for class_index in np.flatnonzero(classes):
            image[image == class_index + 1] = 0
    return maps[0] if single else maps
