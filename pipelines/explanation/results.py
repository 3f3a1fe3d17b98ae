"""What the explanation pipelines return (``Explanation``, ``Faithfulness``) and raise (``ExplanationError``).

They import nothing else of the package, so every module in it can use them without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


class ExplanationError(ValueError):
    """A bad method, target, layer or display option; the message lists the valid choices."""


@dataclass(frozen=True)
class Faithfulness:
    """Deletion test: does hiding what the heatmap marks matter more than hiding the rest?

    Drops are in probability of the target class (0.61 = 61 percentage points).
    """

    drop_most_relevant: float
    drop_least_relevant: float
    score: float
    sentence: str


@dataclass(frozen=True)
class Explanation:
    """A class activation map and the images to show it.

    ``cam_grid`` is the ``(rows, columns)`` of the layer's activation map: the heatmap's real
    resolution before it is upsampled to the image (7 x 7 for the default model at 224 pixels).
    ``region_pixels`` is set by ``explain_defect`` only: how many pixels of the original image
    the explained region covers, i.e. the raw argmax of the class before stage 1 and
    ``min_area``. The outline ``DefectSegmenter.segment`` serves may have dropped that region,
    so a caller can tell "explained where the model painted it" from "explained a region that
    is not in the outline".
    """

    heatmap: np.ndarray
    overlay: Image.Image
    panels: Image.Image
    target_index: int
    target_label: str
    target_score: float
    method: str
    layer_name: str
    faithfulness: Faithfulness | None
    cam_grid: tuple[int, int] | None = None
    guided: bool = False
    region_pixels: int | None = None
