"""The options every explanation takes, checked before any work starts."""

from __future__ import annotations

from pipelines.explanation.cam import _method_class
from pipelines.explanation.metrics import _check_fraction
from pipelines.explanation.render import _check_alpha, _colormap


def check_options(method: str, alpha: float, fraction: float, colormap: str) -> tuple[str, type, object]:
    """``(method name, its pytorch-grad-cam class, the colormap)``; a bad option raises naming the valid ones.

    Raises:
        ExplanationError: an unknown method or colormap, an alpha or deletion fraction out of range.
    """
    method, cam_class = _method_class(method)
    _check_alpha(alpha)
    _check_fraction(fraction)
    return method, cam_class, _colormap(colormap)
