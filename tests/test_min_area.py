"""Per-class minimum areas fitted on validation predictions."""

from __future__ import annotations

import numpy as np

from common.segmentation_scores import dice_per_pair
from train.segmentation.postprocessing import fit_min_areas


def test_small_false_positives_are_cleared_and_large_true_masks_kept():
    truth = np.zeros((4, 40, 40), dtype=np.uint8)
    predicted = truth.copy()
    truth[0, :20, :20] = 1  # image 0 has a large class-1 defect, found
    predicted[0, :20, :20] = 1
    predicted[1, :3, :3] = 1  # images 1 and 2: small class-1 false positives (9 pixels)
    predicted[2, :4, :4] = 1
    truth[3, :5, :5] = 2  # image 3: class 2 found exactly, but small (25 pixels)
    predicted[3, :5, :5] = 2
    fitted, dice = fit_min_areas(predicted, truth, 3, candidates=(0, 20, 50, 500))
    assert fitted[1] == 20  # clears the 9- and 16-pixel blobs, keeps the 400-pixel defect
    assert fitted[2] == 0  # clearing the right 25-pixel mask would cost a perfect score
    assert dice.mean() == 1.0
    assert dice_per_pair(predicted, truth, 3).mean() < 1.0
