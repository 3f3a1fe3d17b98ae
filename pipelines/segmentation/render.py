"""Pictures of a segmentation: colours per class, the tinted overlay and the palette mask PNG."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

from pipelines.segmentation.predict import Segmentation

# Background is black; defect classes 1..8 use well-separated colours (Sasha Trubetskoy's
# list), so the four Severstal classes are red, green, blue and yellow.
CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 0),
    1: (230, 25, 75),
    2: (60, 180, 75),
    3: (0, 130, 200),
    4: (255, 225, 25),
    5: (245, 130, 48),
    6: (145, 30, 180),
    7: (70, 240, 240),
    8: (240, 50, 230),
}


def class_colour(class_id: int) -> tuple[int, int, int]:
    """The colour of ``class_id``: ``CLASS_COLOURS``, then golden-ratio hues for larger ids."""
    if class_id in CLASS_COLOURS:
        return CLASS_COLOURS[class_id]
    red, green, blue = colorsys.hsv_to_rgb((class_id * 0.618034) % 1.0, 0.75, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def _palette_lut(size: int = 256) -> np.ndarray:
    return np.array([class_colour(i) for i in range(size)], dtype=np.uint8)


def overlay_masks(image: Image.Image, segmentation: Segmentation, alpha: float = 0.45) -> Image.Image:
    """The image with each defect class tinted in its ``CLASS_COLOURS`` colour and outlined.

    Raises:
        ValueError: ``image`` is not the size that was segmented, or ``alpha`` is outside 0..1.
    """
    label_map = segmentation.label_map
    if (image.height, image.width) != label_map.shape:
        raise ValueError(
            f"overlay_masks: the image is {image.width}x{image.height} but the segmentation is "
            f"{label_map.shape[1]}x{label_map.shape[0]}; pass the image that was segmented."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay_masks: alpha must be between 0 and 1, got {alpha}.")
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = _palette_lut()[label_map].astype(np.float32)
    defect = label_map > 0
    out = np.where(defect[..., None], (1 - alpha) * pixels + alpha * colours, pixels)
    # A one-pixel outline in the full colour keeps thin or faint regions visible at any alpha.
    edge = np.zeros_like(defect)
    edge[:-1] |= label_map[:-1] != label_map[1:]
    edge[1:] |= label_map[1:] != label_map[:-1]
    edge[:, :-1] |= label_map[:, :-1] != label_map[:, 1:]
    edge[:, 1:] |= label_map[:, 1:] != label_map[:, :-1]
    edge &= defect
    out[edge] = colours[edge]
    return Image.fromarray(np.rint(out).astype(np.uint8))


def label_map_png(segmentation: Segmentation) -> Image.Image:
    """The label map as a palette ("P") image: pixel values are class ids, colours ``CLASS_COLOURS``."""
    picture = Image.fromarray(segmentation.label_map)
    picture.putpalette(_palette_lut().ravel().tolist())
    return picture
