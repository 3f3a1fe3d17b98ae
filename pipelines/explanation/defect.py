"""``explain_defect``: a class activation map for one defect class of a ``DefectSegmenter``.

The target is the class's score summed over the region the model paints with it: its raw
argmax, before stage 1 and ``min_area``, which is why the result also says how many pixels that
region has (``Explanation.region_pixels``). The image runs whole, as the segmenter prepares it
and padded to a multiple of 32, even for a segmenter set up to tile: the CAM needs the
prediction and the gradients of one forward pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from common.image_io import load_image
from pipelines.classification import ImageSource
from pipelines.explanation.cam import _run_cam
from pipelines.explanation.layers import _resolve_layer
from pipelines.explanation.metrics import _region_probabilities, defect_deletion_test
from pipelines.explanation.options import check_options
from pipelines.explanation.render import _pictures
from pipelines.explanation.results import Explanation, ExplanationError
from pipelines.segmentation import DefectSegmenter, TileGrid


def _defect_class(segmenter: DefectSegmenter, class_id: int | str) -> int:
    """``class_id`` as a defect class index 1..C-1, from an index or an exact label."""
    choices = ", ".join(f"{i} {segmenter.id2label.get(i, str(i))!r}" for i in range(1, segmenter.num_labels))
    if isinstance(class_id, numbers.Integral) and not isinstance(class_id, bool):
        if 1 <= int(class_id) < segmenter.num_labels:
            return int(class_id)
        if int(class_id) == 0:
            raise ExplanationError(f"class_id=0 is the background, not a defect; pick one of {choices}")
        raise ExplanationError(f"class_id={class_id} is out of range; the defect classes are {choices}")
    if isinstance(class_id, str):
        by_label = {name: index for index, name in segmenter.id2label.items()}
        if by_label.get(class_id, 0) >= 1:
            return by_label[class_id]
        close = difflib.get_close_matches(class_id, segmenter.defect_labels, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
        raise ExplanationError(
            f"class_id={class_id!r} is not a defect class of this model (labels are matched exactly).{hint} "
            f"The defect classes are {choices}."
        )
    raise ExplanationError(f"class_id must be a class index or a label, not {type(class_id).__name__}")


def _whole_image(segmenter: DefectSegmenter, rgb: Image.Image) -> tuple[torch.Tensor, TileGrid]:
    """The image as the segmenter prepares it, padded to a multiple of 32, as one ``(1, 3, H, W)`` input.

    A segmenter set up to tile is given the whole image anyway: the CAM needs the prediction
    and the gradients of one forward pass. The tiles are put back where ``preprocess`` cut
    them from (overlaps hold the same pixels), so normalising and padding stay its own.
    """
    tiles, grid = segmenter.preprocess(rgb)
    if len(grid.origins) == 1:
        return tiles, grid
    (tile_h, tile_w), (padded_h, padded_w) = grid.tile_size, grid.padded_size
    padded = torch.zeros((tiles.shape[1], padded_h, padded_w), dtype=tiles.dtype)
    for (y, x), tile in zip(grid.origins, tiles):
        padded[:, y : y + tile_h, x : x + tile_w] = tile
    return padded[None], grid


def _predicted_classes(logits: torch.Tensor, grid: TileGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel class at the padded input size, as ``DefectSegmenter.stitch`` + argmax gives it,
    and which of those pixels are image rather than padding."""
    upsampled = torch.nn.functional.interpolate(
        logits.float(), size=grid.padded_size, mode="bilinear", align_corners=False
    )
    labels = upsampled[0].argmax(dim=0)
    inside = torch.zeros(grid.padded_size, dtype=torch.bool)
    inside[: grid.model_size[0], : grid.model_size[1]] = True
    return labels, inside


def _region_at_logits_size(pixels: torch.Tensor, logits_size: tuple[int, int]) -> torch.Tensor:
    """A pixel mask at the input size -> the logits cells that hold any of its pixels."""
    cells = torch.nn.functional.adaptive_max_pool2d(pixels[None, None].float(), logits_size)
    return cells[0, 0] > 0


def _classes_found(segmenter: DefectSegmenter, labels: torch.Tensor, inside: torch.Tensor) -> str:
    counts = torch.bincount(labels[inside], minlength=segmenter.num_labels).tolist()
    total = int(inside.sum())
    found = [
        f"{segmenter.id2label.get(i, str(i))!r} (class {i}, {counts[i] / total:.1%} of the image)"
        for i in range(1, segmenter.num_labels)
        if counts[i]
    ]
    return "; classes found: " + ", ".join(found) if found else "; the model finds no defect in it at all"


def _cam_on_image(cam: np.ndarray, grid: TileGrid) -> np.ndarray:
    """A CAM of the padded input -> the original image: padding cropped, ``resize_to`` undone, peak 1."""
    height, width = grid.model_size
    heatmap = cam[:height, :width]
    if grid.model_size != grid.original_size:
        original_h, original_w = grid.original_size
        heatmap = np.asarray(
            Image.fromarray(np.ascontiguousarray(heatmap, dtype=np.float32)).resize(
                (original_w, original_h), Image.Resampling.BILINEAR
            )
        )
    peak = float(heatmap.max())
    # The CAM was scaled to [0, 1] over the padded input; its peak may have been in the padding.
    return np.clip(heatmap / peak if peak > 0 else heatmap, 0.0, 1.0).astype(np.float32)


def _pixels_in_image(segmenter: DefectSegmenter, logits: torch.Tensor, grid: TileGrid, class_id: int) -> int:
    """Pixels of the original image where ``class_id`` wins the argmax, counted as ``segment()`` counts them.

    ``stitch`` is given the whole padded input as its one tile, so the padding is cropped and a
    ``resize_to`` image is resized back exactly as for the served outline: the count is in the
    same pixels as ``min_area`` and ``DefectRegion.area_fraction`` (before stage 1 and ``min_area``).
    """
    whole = dataclasses.replace(grid, tile_size=grid.padded_size, origins=((0, 0),))
    return int((segmenter.stitch(logits, whole).argmax(dim=0) == class_id).sum())


def explain_defect(
    segmenter: DefectSegmenter,
    image: ImageSource,
    *,
    class_id: int | str,
    method: str = "gradcam",
    layer: str | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
    faithfulness: bool = True,
    fraction: float = 0.2,
) -> Explanation:
    """Explain where a segmentation model sees one defect class, with a class activation map.

    The target is pytorch-grad-cam's ``SemanticSegmentationTarget``: the sum of the class's
    logits over the region the model predicts for it (at logits resolution, 1/4 of the input
    for SegFormer), so the map answers "what made the model paint this region as this class".
    The image runs at its native size, padded to a multiple of 32 as ``DefectSegmenter``
    does; the padding is cropped off the heatmap. The predicted region is the plain argmax
    (``segment()`` without stage 1 or ``min_area``).

    A segmenter served by ONNX Runtime is explained with its eager weights (``segmenter.eager()``):
    the CAM needs activations and gradients, the whole image runs in one pass (which a graph
    exported at a fixed tile size could not take), and region, CAM and deletion test then all
    come from the same network.

    Args:
        segmenter: A segmenter loaded by ``DefectSegmenter.from_pretrained``; never modified.
        image: A path, bytes or a PIL image.
        class_id: The defect class to explain: an index 1..C-1 or its exact label.
        method: A key of ``METHODS``.
        layer: Module name to read activations from (see ``candidate_layers``); ``None`` uses
            the table's layer (for SegFormer ``decode_head.activation``: the fused features
            after ``linear_fuse``, BatchNorm and ReLU; see ``layers._LAYER_TABLE`` for why).
        alpha: Weight of the colour-mapped heatmap in the overlay, 0 to 1.
        colormap: A matplotlib colour map name.
        faithfulness: Run the deletion test on the class's mean probability over its region
            (one extra forward pass with a batch of two).
        fraction: Share of the image that the deletion test removes, up to 0.5.

    Returns:
        The heatmap at the original image's size, its overlay and three-panel view; the target
        is the class, its score the class's mean probability over its predicted region, and
        ``region_pixels`` that region's size in pixels of the original image. Stage 1 or
        ``min_area`` may leave the region out of what ``segment()`` serves; the explanation
        still explains it, and ``region_pixels`` lets the caller say so.

    Raises:
        ExplanationError: Bad method, class, layer or option, or the class is not predicted
            anywhere in this image (the message lists the classes that are).
        common.image_io.ImageLoadError: The image cannot be read.

    Example:
        >>> segmenter = DefectSegmenter.from_pretrained("models/steel-segformer")  # doctest: +SKIP
        >>> explain_defect(segmenter, "0002cc93b.jpg", class_id="scratches").heatmap.shape  # doctest: +SKIP
        (256, 1600)
    """
    method, cam_class, cmap = check_options(method, alpha, fraction, colormap)
    segmenter = segmenter.eager()
    class_id = _defect_class(segmenter, class_id)
    label = segmenter.id2label.get(class_id, str(class_id))
    layer_name, rule = _resolve_layer(segmenter.model, layer)
    rgb = load_image(image)

    pixel_values, layout = _whole_image(segmenter, rgb)
    logits = segmenter.forward(pixel_values)
    labels, inside = _predicted_classes(logits, layout)
    pixels = (labels == class_id) & inside
    if not pixels.any():
        raise ExplanationError(
            f"class_id={class_id} ({label!r}) was not found in this image: the model predicts no pixel of it"
            f"{_classes_found(segmenter, labels, inside)}. Pick a class that was found."
        )
    region = _region_at_logits_size(pixels, tuple(logits.shape[-2:]))
    targets = [SemanticSegmentationTarget(class_id, region.numpy().astype(np.float32))]
    cam, _, cam_grid = _run_cam(segmenter.model, cam_class, layer_name, rule, pixel_values, targets)
    baseline = _region_probabilities(logits, class_id, region)[0]

    heatmap = _cam_on_image(cam, layout)
    return Explanation(
        heatmap=heatmap,
        **_pictures(rgb, heatmap, cmap, alpha),
        target_index=class_id,
        target_label=label,
        target_score=baseline,
        method=method,
        layer_name=layer_name,
        faithfulness=defect_deletion_test(segmenter, pixel_values, cam, layout, class_id, region, baseline, fraction)
        if faithfulness
        else None,
        cam_grid=cam_grid,
        region_pixels=_pixels_in_image(segmenter, logits, layout, class_id),
    )
