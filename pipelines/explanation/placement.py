"""Where the model input lies in the original image, and how a map at input size is put back there.

A classifier's processor resizes and center-crops the image, so a CAM of the model input is
not a CAM of the photo. ``input_placement`` reads that resize and crop from the checkpoint's
processor (through ``common.preprocessing.input_geometry``, the same reader preprocessing
uses) and ``map_to_original`` inverts it, so the heatmap lines up with the photo the user gave
and is 0 where the crop cut the photo off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from common.preprocessing import input_geometry


@dataclass(frozen=True)
class Placement:
    """Model-input coordinate = original coordinate * scale - start, per axis (y, x).

    Coordinates are continuous (pixel ``i`` covers ``[i, i + 1)``), as image resizing uses them.
    """

    scale: tuple[float, float]
    start: tuple[float, float]


def _shortest_edge_size(original: tuple[int, int], short: int) -> tuple[int, int]:
    """The rounding of torchvision's ``Resize(int)`` and transformers' ``default_to_square=False``."""
    height, width = original
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def _crop_start(resized: int, crop: int) -> int:
    """First resized pixel inside a center crop; negative when the crop pads the image.

    torchvision rounds the offset and transformers truncates it; they differ by half a
    resized pixel at most, so torchvision's rule (the fast preprocessing path) serves both.
    """
    if crop > resized:
        return -((crop - resized) // 2)
    return round((resized - crop) / 2.0)


def input_placement(processor, original_size: tuple[int, int], input_size: tuple[int, int]) -> Placement:
    """Where the model input lies in the original image: the inverse of resize + center crop.

    Args:
        processor: The checkpoint's image processor (timm wrapper or transformers).
        original_size: ``(height, width)`` of the image the user gave.
        input_size: ``(height, width)`` of ``pixel_values``.

    Returns:
        The placement read from ``common.preprocessing.input_geometry``. When that cannot
        describe the processor, or its sizes disagree with the actual input, the input is
        taken to cover the whole image (a stretch): slightly misplaced for a cropping
        processor, but never outside the image.
    """
    stretch = Placement(scale=(input_size[0] / original_size[0], input_size[1] / original_size[1]), start=(0.0, 0.0))
    try:
        geometry = input_geometry(processor)
    except (AttributeError, KeyError, TypeError, ValueError):
        return stretch  # a processor shape the shared reader does not know
    kind, value = geometry.resize
    if kind == "shortest_edge" and isinstance(value, int):
        resized = _shortest_edge_size(original_size, value)
    elif kind == "exact" and None not in tuple(value):
        resized = tuple(value)
    else:
        return stretch
    crop = tuple(geometry.crop) if geometry.crop else resized
    if crop != tuple(input_size):
        return stretch
    return Placement(
        scale=(resized[0] / original_size[0], resized[1] / original_size[1]),
        start=(float(_crop_start(resized[0], crop[0])), float(_crop_start(resized[1], crop[1]))),
    )


def map_to_original(cam: np.ndarray, placement: Placement, original_size: tuple[int, int]) -> np.ndarray:
    """Put a model-input map back onto the original image; 0 where the model saw nothing."""
    (scale_y, scale_x), (start_y, start_x) = placement.scale, placement.start
    height, width = original_size
    # PIL's AFFINE samples input (a*x + b*y + c, d*x + e*y + f) at each output pixel centre, in the
    # same continuous coordinates, and fills centres that land outside the input with fillcolor.
    mapped = Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32)).transform(
        (width, height),
        Image.Transform.AFFINE,
        (scale_x, 0.0, -start_x, 0.0, scale_y, -start_y),
        resample=Image.Resampling.BILINEAR,
        fillcolor=0.0,
    )
    return np.clip(np.asarray(mapped, dtype=np.float32), 0.0, 1.0)
