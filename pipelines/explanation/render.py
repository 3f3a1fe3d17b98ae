"""The pictures of an explanation: the colour-mapped heatmap over the photo, and three panels side by side.

Display options are checked here too (``_check_alpha``, ``_colormap``), so a pipeline refuses a
bad one before it computes anything.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines.explanation.results import ExplanationError

_PANEL_MAX_HEIGHT = 512  # the three-panel view is for display; the overlay keeps full size
_PANEL_GAP = 8


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ExplanationError(f"alpha={alpha} must be between 0 (photo only) and 1 (heatmap only)")


def _colormap(name: str):
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ExplanationError(
            f"colormap={name!r} is not a matplotlib colour map; try 'jet', 'inferno', 'viridis' or 'turbo'"
        ) from None


def _colour(heatmap: np.ndarray, colormap) -> np.ndarray:
    return np.round(colormap(heatmap)[..., :3] * 255).astype(np.uint8)


def _pictures(rgb: Image.Image, heatmap: np.ndarray, colormap, alpha: float) -> dict[str, Image.Image]:
    """The overlay (photo blended with the colour-mapped heatmap) and the three-panel view.

    Keyed by their ``Explanation`` field names, so both pipelines pass them on as ``**pictures``.
    """
    coloured = _colour(heatmap, colormap)
    overlay = Image.fromarray(
        np.round((1.0 - alpha) * np.asarray(rgb, dtype=np.float32) + alpha * coloured).astype(np.uint8)
    )
    return {"overlay": overlay, "panels": _panels(rgb, Image.fromarray(coloured), overlay)}


def _panels(original: Image.Image, coloured: Image.Image, overlay: Image.Image) -> Image.Image:
    """Original | heatmap | overlay side by side, at most ``_PANEL_MAX_HEIGHT`` pixels high."""
    width, height = original.size
    if height > _PANEL_MAX_HEIGHT:
        width, height = max(1, round(width * _PANEL_MAX_HEIGHT / height)), _PANEL_MAX_HEIGHT
    canvas = Image.new("RGB", (3 * width + 2 * _PANEL_GAP, height), "white")
    for slot, picture in enumerate((original, coloured, overlay)):
        canvas.paste(picture.resize((width, height), Image.Resampling.BILINEAR), (slot * (width + _PANEL_GAP), 0))
    return canvas
