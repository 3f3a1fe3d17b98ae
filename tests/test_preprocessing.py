"""A checkpoint's preprocessing, read once and applied the same way everywhere."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import (
    BeitImageProcessor,
    ConvNextImageProcessor,
    DeiTImageProcessor,
    TimmWrapperImageProcessor,
    ViTImageProcessor,
)

from common.default_model import PRETRAINED_CFG
from common.preprocessing import batch_preprocessor, eval_transform, fast_eval_transform, input_geometry

PROCESSORS = {
    "vit": lambda: ViTImageProcessor(size={"height": 48, "width": 40}),
    "convnext-crop-pct": lambda: ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875),
    "convnext-large-warp": lambda: ConvNextImageProcessor(size={"shortest_edge": 384}, crop_pct=0.875),
    "deit-resize-then-crop": lambda: DeiTImageProcessor(
        size={"height": 72, "width": 72}, crop_size={"height": 64, "width": 64}
    ),
    "beit": lambda: BeitImageProcessor(size={"height": 56, "width": 56}, do_center_crop=False),
    "timm-default-model": lambda: TimmWrapperImageProcessor(pretrained_cfg=dict(PRETRAINED_CFG)),
}


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(3)
    smooth = rng.integers(0, 255, (30, 45, 3), dtype=np.uint8)
    return Image.fromarray(smooth).resize((301, 203), Image.BILINEAR)  # photo-like: no pixel-level noise


@pytest.mark.parametrize("name", PROCESSORS)
def test_geometry_reproduces_the_processor(name, photo):
    processor = PROCESSORS[name]()
    expected = processor(images=[photo], return_tensors="pt")["pixel_values"][0]
    actual = eval_transform(input_geometry(processor))(photo)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() < 0.05  # one grey level of bicubic rounding at most


def test_default_model_geometry_is_resize_256_crop_224():
    geometry = input_geometry(TimmWrapperImageProcessor(pretrained_cfg=dict(PRETRAINED_CFG)))
    assert geometry.resize == ("shortest_edge", 256) and geometry.crop == (224, 224)
    assert geometry.mean == (0.5, 0.5, 0.5) and geometry.interpolation == "bicubic"


class _OffsetProcessor:
    """A processor with a step the geometry does not model (a constant offset)."""

    def __init__(self):
        self.inner = ViTImageProcessor(size={"height": 32, "width": 32})
        self.size, self.image_mean, self.image_std, self.resample = (
            self.inner.size,
            self.inner.image_mean,
            self.inner.image_std,
            self.inner.resample,
        )

    def __call__(self, images, return_tensors):
        return {"pixel_values": self.inner(images=images, return_tensors=return_tensors)["pixel_values"] + 0.5}


def test_a_processor_that_differs_keeps_being_used(photo):
    processor = _OffsetProcessor()
    assert fast_eval_transform(processor) is None
    batch = batch_preprocessor(processor)([photo])
    expected = processor(images=[photo], return_tensors="pt")["pixel_values"]
    assert (batch - expected).abs().max() == 0


def test_fast_path_is_used_when_it_agrees(photo):
    processor = PROCESSORS["vit"]()
    assert fast_eval_transform(processor) is not None
    assert batch_preprocessor(processor)([photo, photo]).shape == (2, 3, 48, 40)
