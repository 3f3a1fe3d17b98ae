"""What a checkpoint's image processor does, as plain numbers.

Transformers image processors and timm's ``pretrained_cfg`` describe the same few facts
in different shapes. Training (augmentation sizes), the app (the Model tab) and Grad-CAM
(mapping a heatmap back through the center crop) all need those facts, so they are read
in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2


@dataclass(frozen=True)
class InputGeometry:
    """How an image becomes model input: resize, then an optional center crop, then normalise.

    ``resize`` is ``("shortest_edge", n)`` (keep aspect ratio) or ``("exact", (h, w))``;
    ``crop`` is the center-crop ``(h, w)`` or None.
    """

    resize: tuple[str, int | tuple[int, int]]
    crop: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    @property
    def input_size(self) -> tuple[int, int]:
        if self.crop:
            return self.crop
        kind, value = self.resize
        return (value, value) if kind == "shortest_edge" else value


_PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _size_value(size, key):
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return value


def input_geometry(processor) -> InputGeometry:
    """Read the resize/crop/normalisation of a transformers or timm-wrapper image processor."""
    data_config = getattr(processor, "data_config", None)
    if data_config:  # TimmWrapperImageProcessor: timm's resolve_data_config output
        height, width = data_config["input_size"][1:]
        crop_pct = data_config.get("crop_pct") or 1.0
        mode = data_config.get("crop_mode", "center")
        if mode == "squash":
            resize = ("exact", (math.floor(height / crop_pct), math.floor(width / crop_pct)))
        else:
            resize = ("shortest_edge", math.floor(min(height, width) / crop_pct))
        return InputGeometry(
            resize=resize,
            crop=(height, width),
            mean=tuple(data_config["mean"]),
            std=tuple(data_config["std"]),
            interpolation=data_config.get("interpolation", "bilinear"),
        )
    size = processor.size
    crop_size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    shortest = _size_value(size, "shortest_edge")
    crop_pct = getattr(processor, "crop_pct", None)
    if shortest and crop_pct and shortest < 384:
        # ConvNeXt/ResNet processors: resize to shortest/crop_pct, then crop `shortest`.
        resize, crop = ("shortest_edge", int(shortest / crop_pct)), (shortest, shortest)
    elif shortest and crop_pct:
        resize, crop = ("exact", (shortest, shortest)), None  # ConvNeXt warps large inputs
    elif shortest:
        resize, crop = ("shortest_edge", shortest), None
    else:
        resize, crop = ("exact", (_size_value(size, "height"), _size_value(size, "width"))), None
    if crop_size is not None:
        crop = (_size_value(crop_size, "height"), _size_value(crop_size, "width"))
    resample = getattr(processor, "resample", 2)
    resample = getattr(resample, "value", resample)
    do_normalize = getattr(processor, "do_normalize", True)
    return InputGeometry(
        resize=resize,
        crop=crop,
        mean=tuple(processor.image_mean) if do_normalize else (0.0, 0.0, 0.0),
        std=tuple(processor.image_std) if do_normalize else (1.0, 1.0, 1.0),
        interpolation=_PIL_RESAMPLE_NAMES.get(int(resample), "bilinear"),
    )


def interpolation_mode(name: str) -> InterpolationMode:
    """torchvision's name for a resize filter (unknown names fall back to bilinear)."""
    try:
        return InterpolationMode(name)
    except ValueError:
        return InterpolationMode.BILINEAR


def eval_transform(geometry: InputGeometry) -> v2.Compose:
    """PIL image -> normalised tensor: the deterministic resize + center crop ``geometry`` describes."""
    kind, value = geometry.resize
    size = value if kind == "shortest_edge" else list(value)
    steps = [v2.ToImage(), v2.Resize(size, interpolation=interpolation_mode(geometry.interpolation), antialias=True)]
    if geometry.crop:
        steps.append(v2.CenterCrop(list(geometry.crop)))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(geometry.mean), list(geometry.std))]
    return v2.Compose(steps)


# PIL and torchvision round bicubic resampling differently by up to one grey level, which
# is 2/255 after normalising with std 0.5; anything beyond this is a real disagreement.
_AGREEMENT_TOLERANCE = 0.05


def fast_eval_transform(processor) -> v2.Compose | None:
    """A torchvision version of ``processor``'s evaluation path, or None if it would differ.

    Image processors that go through PIL cost about 2 ms per photo on this class of CPU,
    a sixth of a small model's forward pass; torchvision does the same in about 0.7 ms.
    The transform is checked against the processor itself on a test image, so a processor
    with steps we do not model (offsets, padding, odd resize rules) keeps being used as is.
    """
    try:
        transform = eval_transform(input_geometry(processor))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    probe = Image.fromarray(np.random.default_rng(0).integers(0, 256, (157, 211, 3), dtype=np.uint8))
    try:
        expected = processor(images=[probe], return_tensors="pt")["pixel_values"][0]
    except (TypeError, ValueError):
        return None
    actual = transform(probe)
    if actual.shape != expected.shape or (actual - expected).abs().max() > _AGREEMENT_TOLERANCE:
        return None
    return transform


def batch_preprocessor(processor):
    """``images -> pixel_values`` for a checkpoint: the fast path when it agrees, else the processor."""
    transform = fast_eval_transform(processor)
    if transform is None:
        return lambda images: processor(images=list(images), return_tensors="pt")["pixel_values"]
    return lambda images: torch.stack([transform(image) for image in images])
