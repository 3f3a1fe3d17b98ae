"""Training augmentation keeps the whole of a wide input in view."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from common.preprocessing import InputGeometry
from train.classification.augment import AugmentConfig, train_transform


def _strip_geometry(height: int, width: int) -> InputGeometry:
    return InputGeometry(resize=("exact", (height, width)), crop=None, mean=(0.5,) * 3, std=(0.5,) * 3,
                         interpolation="bilinear")  # fmt: skip


def _strip_with_marked_ends() -> Image.Image:
    pixels = np.zeros((256, 1600, 3), dtype=np.uint8)
    pixels[:, :40] = 255  # bright band at the left end, another at the right end
    pixels[:, -40:] = 255
    return Image.fromarray(pixels)


def test_strip_input_sees_the_whole_strip_not_a_square_centre_crop():
    torch.manual_seed(0)
    transform = train_transform(_strip_geometry(128, 800), AugmentConfig(scale_min=1.0, hflip=False, rotation_degrees=0,
                                                                          color_jitter=0))  # fmt: skip
    for _ in range(5):
        out = transform(_strip_with_marked_ends())
        assert out.shape == (3, 128, 800)
        # Both bright ends survive; a 4:3 centre crop (the stock fallback) would show neither.
        assert out[:, :, :10].mean() > 0.9 and out[:, :, -10:].mean() > 0.9


def test_partial_crops_of_a_strip_keep_its_aspect_ratio():
    torch.manual_seed(0)
    transform = train_transform(_strip_geometry(128, 800), AugmentConfig(scale_min=0.6, hflip=False, rotation_degrees=0,
                                                                          color_jitter=0))  # fmt: skip
    crop = transform.transforms[1]
    for _ in range(20):
        params = crop.make_params([torch.zeros(3, 256, 1600)])
        assert params["height"] * params["width"] >= 0.6 * 256 * 1600 - 1600  # the scale asked for
        assert 6.25 * 3 / 4 - 0.1 < params["width"] / params["height"] < 6.25 * 4 / 3 + 0.1
