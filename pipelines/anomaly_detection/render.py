"""The picture of an anomaly score: the map colour-coded over the image, the anomalous region outlined."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from pipelines.anomaly_detection.predict import AnomalyResult, region_outline

# The outline's colour: white reads on both the jet map's blues and its reds.
OUTLINE_COLOUR = (255, 255, 255)
# The colour scale runs from 0 to twice the line, so the line itself is the scale's middle (jet's
# green) whatever the threshold, and only pixels above the line turn yellow and red.
_SCALE_OVER_LINE = 2.0


def anomaly_overlay(image: Image.Image, result: AnomalyResult, threshold: float = 1.0, alpha: float = 0.45):
    """``image`` blended with ``result``'s map (jet) and the region above ``threshold`` (normalised) outlined.

    Raises:
        ValueError: ``image`` is not the size that was scored, or ``alpha`` is outside 0..1.
    """
    import matplotlib

    heat = result.anomaly_map
    if (image.height, image.width) != heat.shape:
        raise ValueError(
            f"anomaly_overlay: the image is {image.width}x{image.height} but the map is {heat.shape[1]}x"
            f"{heat.shape[0]}; pass the image that was scored."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"anomaly_overlay: alpha must be between 0 and 1, got {alpha}.")
    scaled = np.clip(heat / (_SCALE_OVER_LINE * threshold), 0.0, 1.0)
    coloured = matplotlib.colormaps["jet"](scaled)[..., :3] * 255.0
    pixels = (1.0 - alpha) * np.asarray(image.convert("RGB"), dtype=np.float32) + alpha * coloured
    outline = region_outline(result.region_at(threshold))
    # Two pixels wide: a one-pixel line vanishes when a long strip is shown scaled down.
    outline = ndimage.binary_dilation(outline, structure=np.ones((2, 2), bool))
    pixels[outline] = OUTLINE_COLOUR
    return Image.fromarray(np.round(pixels).astype(np.uint8))
