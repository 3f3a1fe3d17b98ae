"""How an image becomes a segmenter's input, and its logits a map at the image's size.

Served inference (``pipelines.segmentation``) and the export's parity check (``train.export``)
must feed a SegFormer exactly the same pixels and read its logits back the same way, or the
parity report would measure a model nobody serves. Both sides use these functions:

- ``SegmenterInput.pixels``: the optional fixed resize (``inference_resize``), rescale and
  normalise with the processor's numbers, then zero padding (the dataset's mean colour after
  normalising, the most neutral value the model knows) at the bottom and right up to
  multiples of SegFormer's stride;
- ``tile_starts``: where overlapping tiles of a padded side begin;
- ``restore_size``: logits of the padded input, already upsampled to the padded size ->
  cropped to the model size and resized back to the image's own size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.preprocessing import input_geometry

# SegFormer's encoder halves the resolution four times after a stride-4 stem: inputs whose
# sides are multiples of 32 give feature maps that line up exactly with the pixels (and with
# each other across tiles whose origins are multiples of 32).
STRIDE = 32


def round_up(value: int, multiple: int = STRIDE) -> int:
    """``value`` rounded up to the next multiple of ``multiple``."""
    return -(-value // multiple) * multiple


def tile_starts(length: int, tile: int | None, overlap: int) -> tuple[int, list[int]]:
    """Tile size and start offsets covering ``length`` (a multiple of 32) with overlapping tiles.

    Consecutive tiles share at least ``overlap`` pixels; the last tile is aligned to the end,
    so it may share more. Without ``tile`` or when one tile covers everything, one tile.
    """
    if tile is None or length <= tile:
        return length, [0]
    step = tile - overlap
    return tile, [*range(0, length - tile, step), length - tile]


@dataclass(frozen=True)
class SegmenterInput:
    """A segmentation checkpoint's input rule: rescale factor, mean/std and resize filter."""

    scale: float
    mean: torch.Tensor
    std: torch.Tensor
    resample: Image.Resampling

    @classmethod
    def from_processor(cls, processor) -> SegmenterInput:
        geometry = input_geometry(processor)
        rescale = getattr(processor, "do_rescale", True)
        return cls(
            scale=float(getattr(processor, "rescale_factor", 1 / 255)) if rescale else 1.0,
            mean=torch.tensor(geometry.mean, dtype=torch.float32).view(-1, 1, 1),
            std=torch.tensor(geometry.std, dtype=torch.float32).view(-1, 1, 1),
            resample=Image.Resampling[geometry.interpolation.upper()],
        )

    def pixels(
        self, image: Image.Image, resize_to: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """An image -> normalised ``(3, H', W')`` padded to multiples of 32, and the unpadded ``(h, w)``.

        ``resize_to`` is a fixed ``(height, width)`` the checkpoint runs at; None runs the image
        at its own size.
        """
        if resize_to is not None and tuple(resize_to) != (image.height, image.width):
            image = image.resize((resize_to[1], resize_to[0]), resample=self.resample)
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
        pixels = (pixels * self.scale - self.mean) / self.std
        height, width = pixels.shape[1:]
        pixels = F.pad(pixels, (0, round_up(width) - width, 0, round_up(height) - height))
        return pixels, (height, width)


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, C, h, w)`` logits -> ``(N, C, *size)`` float32, bilinear as in training."""
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)


def restore_size(logits: torch.Tensor, model_size: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
    """``(C, H', W')`` logits at the padded size -> ``(C, H, W)`` at the image's own size.

    The padding is cropped, then a checkpoint that runs at a fixed size has its logits resized
    back to the image.
    """
    logits = logits[:, : model_size[0], : model_size[1]]
    if tuple(model_size) != tuple(original_size):
        logits = upsample(logits[None], original_size)[0]
    return logits
