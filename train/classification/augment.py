"""Training-time augmentation with torchvision.transforms.v2, sized from the checkpoint.

Evaluation uses the checkpoint's own preprocessing (exactly what the app will do), so only
the training side is defined here: it keeps the processor's input size and normalisation,
and adds the randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from common.preprocessing import InputGeometry, interpolation_mode


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation; 0 (or False) switches it off."""

    scale_min: float = 0.6
    hflip: bool = True
    vflip: bool = False
    rotation_degrees: float = 15.0
    color_jitter: float = 0.2


def train_transform(geometry: InputGeometry, config: AugmentConfig = AugmentConfig()) -> v2.Compose:
    """PIL image -> normalised float tensor of the model's input size, randomly varied."""
    height, width = geometry.input_size
    # RandomResizedCrop's aspect ratios (3/4 to 4/3 by default) are centred on the input's own
    # shape: for a 128x800 strip input the stock range cannot fit any crop in a 256x1600 image,
    # and torchvision falls back to a 4:3 centre crop, so the model never sees the strip's ends.
    aspect = width / height
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(
            geometry.input_size,
            scale=(config.scale_min, 1.0),
            ratio=(aspect * 3 / 4, aspect * 4 / 3),
            interpolation=interpolation_mode(geometry.interpolation),
            antialias=True,
        ),
    ]
    if config.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if config.vflip:
        steps.append(v2.RandomVerticalFlip())
    if config.rotation_degrees:
        steps.append(v2.RandomRotation(config.rotation_degrees))
    if config.color_jitter:
        j = config.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(j / 4, 0.5)))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(geometry.mean), list(geometry.std))]
    return v2.Compose(steps)


def batch_mixer(num_classes: int, mixup_alpha: float, cutmix_alpha: float):
    """MixUp and/or CutMix on a batch (labels become soft), or None when both are off."""
    mixers = []
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
