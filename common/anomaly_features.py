"""Patch features of a pretrained CNN for anomaly detection (PatchCore, Roth et al., 2022).

Training (the memory bank of good patches) and inference (each patch's distance to it) must
embed patches in exactly the same way, so this is the one place that does: forward hooks on
mid-level layers of the backbone, "locally aware" 3 x 3 average pooling of each layer's map,
the deeper maps upsampled to the first one's grid and concatenated along channels. The
resulting ``(batch, channels, h, w)`` embedding has one feature vector per patch. This follows
anomalib's ``PatchcoreModel`` (``models/image/patchcore/torch_model.py``: ``feature_pooler`` and
``generate_embedding``) without its Lightning and kornia dependencies.

Layers are module names of the loaded transformers model (``timm_model.blocks.2`` for the
default EfficientNet-Lite0, ``resnet.encoder.stages.1`` for a transformers ResNet). Without a
choice, :func:`default_layers` picks the modules that end the stride-8 and stride-16 stages:
mid-level features, generic enough to transfer from ImageNet and local enough to place a defect,
as the paper recommends (its "layer2 + layer3" of a WideResNet50).

>>> extractor = PatchFeatureExtractor(model, ["timm_model.blocks.2", "timm_model.blocks.4"])  # doctest: +SKIP
>>> extractor(torch.zeros(1, 3, 224, 224)).shape  # doctest: +SKIP
torch.Size([1, 152, 28, 28])
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# The strides of the stages whose outputs PatchCore uses (its layer2 and layer3).
DEFAULT_STRIDES = (8, 16)
# The side of the square input used to find each module's stride; any size a CNN accepts.
_PROBE_SIZE = 128
# Reflect padding of the network input, in input pixels (one stride-16 cell), for new detectors.
# A CNN zero-pads at the image's border, so a border patch's features say "border" as well as
# what is there: a dark strip edge in a corner of a generated steel strip scored above faint
# scratches. With the border reflected and the padded cells cropped off again, image AUROC on
# generated steel went from 0.967 to 0.993 and the false-reject rate from 5% to 2% (make
# bench-anomaly, 320 x 160, seed 0, against --train-args "--pad 0"), for 1.3x the backbone's pixels.
# A multiple of the first layer's stride (8 for the default layers), so whole cells are cropped.
DEFAULT_PAD = 16


def check_pad(pad, input_size: Sequence[int]) -> None:
    """Refuse a ``pad`` that is not a whole number from 0 to under half the smaller side of ``input_size``.

    (Whether it is a whole number of the first layer's cells is only known from a forward pass:
    :class:`PatchFeatureExtractor` checks that.)

    Raises:
        ValueError: naming the pad and the input size.
    """
    if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < min(input_size) // 2:
        raise ValueError(f"pad {pad!r} must be a whole number from 0 to under half of input size {list(input_size)}")


class _EnoughLayers(Exception):
    """Raised by the deepest hook: the layers after it (and the classifier head) are not needed."""


class LayerError(ValueError):
    """A layer name that the backbone does not have; the message lists what it has."""


def _tensor_output(output) -> torch.Tensor | None:
    """The feature map a module returned, or None when it returned something else."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]  # some transformers stages return (hidden_state, ...)
    return None


def feature_map_modules(model: nn.Module, size: int = _PROBE_SIZE) -> list[tuple[str, int, int]]:
    """``(name, stride, channels)`` of every module that outputs a 4-D feature map, in the order they finish.

    Found with one forward pass of a ``size`` x ``size`` zero image: the stride is the input
    side over the map's side.
    """
    finished: list[tuple[str, int, int]] = []
    handles = []

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            tensor = _tensor_output(output)
            if tensor is not None and tensor.ndim == 4 and tensor.shape[-1] > 0:
                finished.append((name, round(size / tensor.shape[-1]), int(tensor.shape[1])))

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    return finished


def default_layers(model: nn.Module, strides: Sequence[int] = DEFAULT_STRIDES) -> list[str]:
    """The modules that end the backbone's stride-8 and stride-16 stages (see the module docstring).

    At each stride the outermost modules are the stages (``blocks.2``, ``encoder.stages.1``),
    and of those the last to finish is the one the next stride starts from. The outermost, not
    simply the last: the first layer of the next stage (a 1 x 1 expansion before its strided
    convolution) still runs at the old stride. A small backbone without a stride-16 stage gets
    its two deepest strides up to 16 instead.

    Raises:
        LayerError: the backbone outputs no 4-D feature maps (a vision transformer).
    """
    last_at: dict[int, str] = {}
    for name, stride, _ in feature_map_modules(model):
        if stride not in last_at or name.count(".") <= last_at[stride].count("."):
            last_at[stride] = name
    chosen = [last_at[s] for s in strides if s in last_at]
    if len(chosen) < len(strides):
        chosen = [last_at[s] for s in sorted(s for s in last_at if 2 <= s <= max(strides))[-len(strides) :]]
    if not chosen:
        raise LayerError(
            "The backbone has no convolutional feature maps to take patch features from (is it a vision "
            "transformer?); use a CNN such as 'default' (EfficientNet-Lite0), a ResNet or a ConvNeXt."
        )
    return chosen


class PatchFeatureExtractor(nn.Module):
    """``pixel_values (B, 3, H, W)`` -> patch embedding ``(B, C, h, w)`` from hooked layers.

    Args:
        backbone: The whole loaded model (a transformers image classifier); it is put in eval mode.
        layers: Module names (``backbone.named_modules()``) whose outputs are embedded, shallow first.
        pool_size: Side of the "locally aware" average pooling window (PatchCore's neighbourhood).
        pad: Input pixels reflected on each side before the backbone and cropped off the
            embedding after it (see :data:`DEFAULT_PAD`); 0 for detectors written before it.

    Raises:
        LayerError: a name the backbone has no module for.
        ValueError: a negative ``pad``.
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[str], pool_size: int = 3, pad: int = 0) -> None:
        super().__init__()
        if pad < 0:
            raise ValueError(f"pad={pad} must be 0 or more input pixels")
        self.pad = int(pad)
        modules = dict(backbone.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown or not layers:
            candidates = [name for name, _, _ in feature_map_modules(backbone)][:40]
            raise LayerError(
                f"layers={list(layers)}: the backbone has no module {unknown[0] if unknown else '(none given)'!r}. "
                f"Name modules that output feature maps, for example: {', '.join(candidates)}"
            )
        self.backbone = backbone.eval()
        self.layers = list(layers)
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)
        self._captured: dict[str, torch.Tensor] = {}
        # The hooks write to one dict: two threads (the app serves requests in a pool) must not interleave.
        self._lock = threading.Lock()
        self._deepest: str | None = None
        self._handles = [modules[name].register_forward_hook(self._capture(name)) for name in self.layers]

    def _capture(self, name: str):
        def hook(_module, _inputs, output):
            self._captured[name] = _tensor_output(output)
            if len(self._captured) == len(self.layers):
                raise _EnoughLayers

        return hook

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.pad:
            pixel_values = F.pad(pixel_values, (self.pad,) * 4, mode="reflect")
        with self._lock:
            self._captured.clear()
            try:
                self.backbone(pixel_values)
            except _EnoughLayers:
                pass  # every hooked layer has run; the rest of the network is skipped on purpose
            captured = dict(self._captured)
            self._captured.clear()
        missing = [name for name in self.layers if name not in captured]
        if missing:
            raise LayerError(f"layers {missing} did not run in the backbone's forward pass; name other modules")
        maps = [self.pool(captured[name].float()) for name in self.layers]
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        embedding = torch.cat(maps, dim=1)
        if self.pad:
            # The padded border in cells of the first layer's grid. int(): the ONNX tracer sees sizes
            # as tensors; the graph is exported at one input size, so they are constants there.
            rows, columns, width = int(size[0]), int(size[1]), int(pixel_values.shape[-1])
            stride = max(1, round(width / columns))  # 8 for the default layers; a power of 2 for CNNs
            if self.pad % stride:
                # A part-cell crop would either score reflected pixels or drop real ones.
                raise ValueError(
                    f"pad={self.pad} is not a whole number of the first layer's cells ({stride} input pixels "
                    f"each): use a multiple of {stride}, such as {max(stride, self.pad // stride * stride)}"
                )
            cells = self.pad // stride
            embedding = embedding[:, :, cells : rows - cells, cells : columns - cells]
        return embedding

    def remove_hooks(self) -> None:
        """Detach the hooks from the backbone (it can then be used on its own again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def patch_vectors(embedding: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B * h * w, C)``: one row per patch, image by image, row by row."""
    return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])


def pixel_values(
    images: Sequence[Image.Image], input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """RGB images -> the backbone's normalised ``(B, 3, H, W)`` input at ``input_size`` (h, w).

    The whole image is resized (bilinear, antialiased) and never cropped: a classifier's centre
    crop would cut off defects near the border.
    """
    height, width = int(input_size[0]), int(input_size[1])
    arrays = [np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)) for image in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    mean_t = torch.tensor(mean, dtype=batch.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=batch.dtype).view(1, -1, 1, 1)
    return (batch - mean_t) / std_t


def embed_images(
    extractor: PatchFeatureExtractor,
    images: Sequence[Image.Image],
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 8,
    progress=None,
) -> torch.Tensor:
    """Patch embeddings ``(N, C, h, w)`` of ``images``, ``batch_size`` at a time.

    Args:
        progress: Called with the number of images done after each batch (a progress bar's update).
    """
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        parts.append(extractor(pixel_values(chunk, input_size, mean, std)))
        if progress is not None:
            progress(len(chunk))
    return torch.cat(parts)
