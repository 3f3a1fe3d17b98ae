"""Defect segmentation at full resolution: preprocess -> forward -> postprocess, for a saved SegFormer.

Images run at their own size: the pixels are normalised as the checkpoint's processor says,
padded up to a multiple of SegFormer's stride (32) and, when ``tile_width`` is set, cut into
overlapping tiles whose logits are blended back together. Logits are upsampled to the padded
size and cropped, so every mask has the size of the image that was read. Label 0 is the
background; every other label is a defect class named by the checkpoint's ``id2label``.

An optional stage-1 multi-label classifier ("which defect types are present") removes the
classes it rules out (``records`` turns a folder of images into a Kaggle submission CSV).

The forward pass of both runs on ONNX Runtime when their checkpoints have exported graphs and
PyTorch otherwise (``runtime``, see ``pipelines.runtime``); tiling, stitching, stage 1 and the
minimum areas are the same code either way.

>>> from pipelines.segmentation import DefectSegmenter
>>> segmenter = DefectSegmenter.from_pretrained("models/steel-segformer", tile_width=512)  # doctest: +SKIP
>>> [(r.label, round(r.area_fraction, 3)) for r in segmenter.segment("0002cc93b.jpg").regions]  # doctest: +SKIP
[('pitting', 0.012), ('crazing', 0.0), ('scratches', 0.0), ('patches', 0.0)]
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from common.checkpoint_files import INFERENCE_RESIZE_KEY, MIN_AREA_KEY
from common.checkpoints import ModelLoadError, load_image_processor, load_pretrained
from common.image_io import load_image
from common.preprocessing import input_geometry
from common.rle import rle_encode
from common.segmentation_input import STRIDE, SegmenterInput, restore_size, round_up, tile_starts, upsample
from common.segmentation_rules import (
    Stage1MismatchError,
    all_stored_min_areas,
    drop_classes,
    ruled_out,
    stage1_columns,
    stored_min_areas,
)
from pipelines.classification import ImageClassifier
from pipelines.runtime import EAGER, ServedByRuntime, ServedNetwork, check_runtime, serve_network

ImageSource = str | os.PathLike | bytes | Image.Image
MinArea = int | Mapping[int | str, int]

DEFAULT_TILE_OVERLAP = 64
# Tiles per model call: bounds memory on very large images while keeping a 256x1600 strip
# (at most a handful of tiles) to one call.
DEFAULT_TILE_BATCH = 8
# The seeded image an ONNX export is checked on: a Severstal strip's size, whole and as two tiles.
CHECK_IMAGE_SIZE = (256, 1600)
CHECK_TILE_WIDTH = 512


@dataclass(frozen=True, eq=False)  # eq=False: comparing or hashing NumPy arrays is ambiguous
class DefectRegion:
    """One defect class in one image.

    ``mask`` is boolean at the original image size; ``confidence`` is the mean max-softmax
    probability over the mask's pixels (0 when the mask is empty); ``rle`` is the Severstal
    run-length encoding of the mask ("" when empty). ``ruled_out`` means stage 1 said the class
    is not in the image, so its pixels were given to the background.
    """

    class_id: int
    label: str
    mask: np.ndarray
    area_fraction: float
    confidence: float
    rle: str
    ruled_out: bool = False

    @property
    def present(self) -> bool:
        return self.area_fraction > 0


@dataclass(frozen=True, eq=False)
class Segmentation:
    """A segmenter's answer for one image.

    ``label_map`` holds the class index of each pixel (uint8, 0 = background) and
    ``regions`` one entry per defect class 1..C-1 in class order, present or not.
    ``probabilities`` (float16, C x H x W, before stage 1 and ``min_area``) is only kept when
    asked for: at two bytes per class and pixel it outweighs the label map C * 2 to 1. ``stage1`` holds the stage-1
    probability of each defect label when a stage-1 classifier was used.
    """

    label_map: np.ndarray
    probabilities: np.ndarray | None
    regions: list[DefectRegion]
    defective: bool
    stage1: dict[str, float] | None = None

    def region(self, label_or_id: str | int) -> DefectRegion:
        """The region of one class, by label or class id."""
        for region in self.regions:
            if label_or_id in (region.label, region.class_id):
                return region
        raise KeyError(f"no defect class {label_or_id!r}; classes are {[r.label for r in self.regions]}")


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one preprocessed image sit.

    ``model_size`` is the (h, w) the model sees (the image, or ``resize_to``), ``padded_size``
    that size rounded up to multiples of 32, ``tile_size`` the (h, w) of every tile and
    ``origins`` their top-left corners in the padded image.
    """

    original_size: tuple[int, int]
    model_size: tuple[int, int]
    padded_size: tuple[int, int]
    tile_size: tuple[int, int]
    origins: tuple[tuple[int, int], ...]
    overlap: int


def blend_weights(tile: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D blending weights: a linear ramp over ``overlap`` pixels on each side shared with a neighbour.

    Ramps start at 0.5/overlap, not 0, so every pixel has some weight from some tile.
    """
    weights = torch.ones(tile)
    ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
    if not at_start:
        weights[:overlap] = torch.minimum(weights[:overlap], ramp)
    if not at_end:
        weights[-overlap:] = torch.minimum(weights[-overlap:], ramp.flip(0))
    return weights


def _check_tile_option(name: str, value: int | None, overlap: int) -> None:
    if value is None:
        return
    if value % STRIDE or value <= overlap:
        suggestion = max(round_up(value), round_up(overlap + 1))
        raise ValueError(
            f"{name} must be a multiple of {STRIDE} (SegFormer's stride) larger than the tile overlap "
            f"{overlap}, got {value}; try {suggestion}, or None to run the whole image at once."
        )


class DefectSegmenter(ServedByRuntime):
    """A semantic-segmentation checkpoint (label 0 = background) with optional stage-1 classifier."""

    def __init__(
        self,
        model,
        processor,
        source: str,
        *,
        stage1: ImageClassifier | None = None,
        tile_width: int | None = None,
        tile_height: int | None = None,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        tile_batch: int = DEFAULT_TILE_BATCH,
        resize_to: tuple[int, int] | None = None,
        served: ServedNetwork = EAGER,
    ):
        """See :meth:`from_pretrained` for the options; ``served`` is what runs the forward pass.

        Raises:
            ValueError: a tiling or resize option that cannot work, named with a fix.
            ModelLoadError: the model has too many classes for a uint8 label map, the stage-1
                classifier does not match its defect classes, or an ONNX graph of a fixed size
                cannot take the tiles these options make.
        """
        if tile_overlap % STRIDE or tile_overlap < 0:
            raise ValueError(f"tile_overlap must be a non-negative multiple of {STRIDE}, got {tile_overlap}.")
        _check_tile_option("tile_width", tile_width, tile_overlap)
        _check_tile_option("tile_height", tile_height, tile_overlap)
        if tile_batch < 1:
            raise ValueError(f"tile_batch must be at least 1, got {tile_batch}.")
        if resize_to is not None and (len(resize_to) != 2 or min(resize_to) < 1):
            raise ValueError(f"resize_to must be (height, width) in pixels, got {resize_to!r}.")
        self.model = model.eval()
        self.processor = processor
        self.source = source
        self.tile_width, self.tile_height = tile_width, tile_height
        self.tile_overlap, self.tile_batch = tile_overlap, tile_batch
        self.resize_to = None if resize_to is None else (int(resize_to[0]), int(resize_to[1]))
        self.id2label = {int(i): name for i, name in model.config.id2label.items()}
        self.num_labels = model.config.num_labels
        if not 2 <= self.num_labels <= 256:
            raise ModelLoadError(
                f"Segmentation model '{source}' has {self.num_labels} labels; this pipeline needs background "
                "plus 1 to 255 defect classes (the label map is uint8)."
            )
        self.input_rule = SegmenterInput.from_processor(processor)
        self.stage1 = stage1
        self._stage1_columns, self._stage1_thresholds = self._match_stage1(stage1) if stage1 else ([], [])
        # Per-class minimum areas fitted on validation; which set is served depends on whether a
        # stage 1 is attached (see common.segmentation_rules). Both are checked now, not at the
        # first request.
        for key, areas in all_stored_min_areas(model.config).items():
            try:
                self.min_areas(areas)
            except ValueError as error:
                raise ModelLoadError(f"Segmentation model '{source}' has a bad {key} in its config: {error}") from error
        self.tuned_min_area, self.min_area_key = stored_min_areas(model.config, with_stage1=stage1 is not None)
        if served.network is not None:
            self._check_graph_size(served.network)
        self.served = served

    def _check_graph_size(self, network) -> None:
        """A graph exported at a fixed height or width takes only tiles of that size: the options must say so."""
        fixed_height, fixed_width = network.input_shape[2:]
        for name, fixed, option in (
            ("tile_height", fixed_height, self.tile_height),
            ("tile_width", fixed_width, self.tile_width),
        ):
            if fixed is not None and option not in (None, fixed):
                raise ModelLoadError(
                    f"The ONNX graph of '{self.source}' ({network.path}) takes only {network.describe_input()} "
                    f"inputs, but {name}={option}. Load it with {name}={fixed}, export it with dynamic height "
                    "and width, or serve it with runtime 'torch'."
                )

    def check_inputs(self) -> list[torch.Tensor]:
        """``pixel_values`` to check an ONNX export on: a seeded strip-sized image, as two tiles and whole.

        A smoothed noise image, normalised and padded by :meth:`preprocess`'s rules; it does not
        depend on this segmenter's tiling options, so one export serves any of them.
        """
        from PIL import ImageFilter

        rng = np.random.default_rng(0)
        height, width = CHECK_IMAGE_SIZE
        noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        pixels = self.input_rule.pixels(noise.filter(ImageFilter.GaussianBlur(2)))[0][None]
        tiles = torch.cat([pixels[..., :CHECK_TILE_WIDTH], pixels[..., CHECK_TILE_WIDTH : 2 * CHECK_TILE_WIDTH]])
        return [tiles, pixels]

    def eager(self) -> DefectSegmenter:
        """This segmenter with PyTorch running its forward pass (itself when it already does).

        It shares the loaded weights, settings and stage 1; Grad-CAM explains with it, as CAMs
        need the eager network's activations and gradients.
        """
        if self.network is None:
            return self
        eager = copy.copy(self)
        eager.served = EAGER
        return eager

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        stage1: str | os.PathLike | None = None,
        tile_width: int | None = None,
        tile_height: int | None = None,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        resize_to: tuple[int, int] | None = None,
        runtime: str = "auto",
    ) -> DefectSegmenter:
        """Load a segmentation checkpoint directory or hub id, and optionally a stage-1 classifier.

        Args:
            name_or_path: A checkpoint saved with ``save_pretrained`` (config with id2label,
                preprocessor_config.json, weights) or a cached hub id.
            stage1: A multi-label classifier checkpoint whose labels are this model's defect
                labels (id2label[1:]); the classes it rules out are removed from the masks.
            tile_width: Run tiles this wide (a multiple of 32), overlapping by ``tile_overlap``
                pixels, instead of the whole image: bounded memory on wide or large images.
            tile_height: The same along the height; None keeps the full height (steel strips
                are only 256 pixels high).
            tile_overlap: Pixels shared by neighbouring tiles, where logits are blended.
            resize_to: ``(height, width)`` to resize every image to before inference, for a
                model trained on resized images (its processor's ``size``). By default images
                run at their native resolution and the processor's fixed resize is ignored:
                the default SegFormer size of 512x512 would squash a 256x1600 strip six-fold
                horizontally. Masks always come back at the original image size.
            runtime: ``"auto"`` (ONNX Runtime for a checkpoint holding ``model.onnx``, else
                PyTorch), ``"torch"`` or ``"onnx"``, for the segmenter and its stage 1 alike;
                see ``pipelines.runtime``. An ONNX graph of a fixed size needs tiles of that size.

        Raises:
            ValueError: a bad ``runtime``, tiling or resize option, named with a fix.
            common.checkpoints.ModelLoadError: with the reason and the fix.
        """
        from transformers import AutoModelForSemanticSegmentation

        check_runtime(runtime)
        # float32 whatever the file holds: checkpoints may ship in fp16 to stay small, and
        # most CPU kernels are fastest (or only exist) in float32.
        model = load_pretrained(AutoModelForSemanticSegmentation, name_or_path, dtype=torch.float32)
        processor = load_image_processor(name_or_path)
        classifier = ImageClassifier.from_pretrained(stage1, runtime=runtime) if stage1 is not None else None
        segmenter = cls(
            model,
            processor,
            source=str(name_or_path),
            stage1=classifier,
            tile_width=tile_width,
            tile_height=tile_height,
            tile_overlap=tile_overlap,
            # A model trained on resized images says so in its config (train/segmentation/train.py).
            resize_to=resize_to or getattr(model.config, INFERENCE_RESIZE_KEY, None),
        )
        location = model.config._name_or_path
        served = serve_network(
            runtime,
            str(name_or_path),
            location if location and os.path.isdir(location) else None,
            model,
            segmenter.check_inputs,
            segmentation=True,
        )
        if served.network is not None:
            segmenter._check_graph_size(served.network)
        segmenter.served = served
        return segmenter

    @property
    def defect_labels(self) -> list[str]:
        return [self.id2label.get(i, str(i)) for i in range(1, self.num_labels)]

    def _match_stage1(self, classifier: ImageClassifier) -> tuple[list[int], list[float]]:
        """For each defect class 1..C-1: the stage-1 output index with its label, and its threshold."""
        try:
            return stage1_columns(
                classifier.model.config.problem_type,
                [classifier.id2label[i] for i in sorted(classifier.id2label)],
                self.defect_labels,
                classifier.trust.thresholds,
                stage1_name=classifier.source,
                segmenter_name=self.source,
            )
        except Stage1MismatchError as error:
            raise ModelLoadError(str(error)) from error

    # -- preprocess -> forward -> postprocess ------------------------------------------------

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, TileGrid]:
        """An RGB image -> normalised, padded tiles ``(T, 3, th, tw)`` and where they go.

        Padding (bottom and right, up to the next multiple of 32) is 0 after normalising, i.e.
        the dataset's mean colour, the most neutral value the model knows.
        """
        original_size = (image.height, image.width)
        pixels, (height, width) = self.input_rule.pixels(image, self.resize_to)
        padded = tuple(pixels.shape[1:])
        tile_h, ys = tile_starts(padded[0], self.tile_height, self.tile_overlap)
        tile_w, xs = tile_starts(padded[1], self.tile_width, self.tile_overlap)
        origins = tuple((y, x) for y in ys for x in xs)
        tiles = torch.stack([pixels[:, y : y + tile_h, x : x + tile_w] for y, x in origins])
        grid = TileGrid(original_size, (height, width), padded, (tile_h, tile_w), origins, self.tile_overlap)
        return tiles, grid

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One model call (ONNX Runtime or PyTorch, see ``runtime``); returns logits ``(N, C, h, w)``.

        The logits are 1/4 of the input size for SegFormer.

        Raises:
            ValueError: an ONNX graph of a fixed size and tiles of another size, naming the fix.
        """
        if self.network is not None:
            if not self.network.accepts(pixel_values.shape):
                height, width = pixel_values.shape[-2:]
                raise ValueError(
                    f"The ONNX graph of '{self.source}' takes {self.network.describe_input()} inputs only, but this "
                    f"image gives {height}x{width} tiles (padded to a multiple of {STRIDE}). Use images and "
                    "tile_width/tile_height that make tiles of its size, export it with dynamic height and width, "
                    "or serve it with runtime 'torch'."
                )
            return self.network(pixel_values)
        with torch.inference_mode():
            return self.model(pixel_values=pixel_values).logits

    def forward_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` over ``tile_batch`` tiles at a time, so memory does not grow with the image."""
        return torch.cat([self.forward(tiles[i : i + self.tile_batch]) for i in range(0, len(tiles), self.tile_batch)])

    def stitch(self, tile_logits: torch.Tensor, grid: TileGrid) -> torch.Tensor:
        """Tile logits -> ``(C, H, W)`` float32 logits at the original image size.

        Each tile's logits are upsampled bilinearly to the tile size, tiles are averaged with
        linear ramps over their overlaps, the padding is cropped, and a ``resize_to`` image is
        resized back to its original size.
        """
        tile_logits = upsample(tile_logits, grid.tile_size)
        if len(grid.origins) == 1:
            logits = tile_logits[0]
        else:
            (tile_h, tile_w), (padded_h, padded_w) = grid.tile_size, grid.padded_size
            total = torch.zeros((tile_logits.shape[1], padded_h, padded_w))
            weight_sum = torch.zeros((padded_h, padded_w))
            for (y, x), logits in zip(grid.origins, tile_logits):
                weight = torch.outer(
                    blend_weights(tile_h, grid.overlap, y == 0, y + tile_h == padded_h),
                    blend_weights(tile_w, grid.overlap, x == 0, x + tile_w == padded_w),
                )
                total[:, y : y + tile_h, x : x + tile_w] += logits * weight
                weight_sum[y : y + tile_h, x : x + tile_w] += weight
            logits = total / weight_sum
        return restore_size(logits, grid.model_size, grid.original_size)

    def postprocess(
        self,
        logits: torch.Tensor,
        *,
        min_area: MinArea | None = None,
        stage1_probabilities: Sequence[float] | None = None,
        return_probabilities: bool = False,
    ) -> Segmentation:
        """``(C, H, W)`` logits at the image size -> label map, per-class regions and RLEs.

        Args:
            logits: The output of :meth:`stitch`.
            min_area: Pixels a class needs in the image to be kept (an int for every class, or
                ``{class id or label: pixels}``); smaller masks are cleared, as the Severstal
                winners did per class to cut false positives on clean images. None: the
                minimums fitted on validation when the model was trained (``tuned_min_area``).
            stage1_probabilities: Stage-1 probability of each defect class 1..C-1, in class order.
            return_probabilities: Keep the softmax as float16 in the result.
        """
        probabilities = logits.softmax(dim=0)
        max_probability, labels = probabilities.max(dim=0)
        label_map = labels.numpy().astype(np.uint8)
        max_probability = max_probability.numpy()
        excluded = np.zeros(self.num_labels - 1, dtype=bool)
        if stage1_probabilities is not None:
            excluded = ruled_out(stage1_probabilities, self._stage1_thresholds)
        label_map = drop_classes(label_map, self.min_areas(min_area)[1:], excluded)
        counts = np.bincount(label_map.ravel(), minlength=self.num_labels)
        confidence_sums = np.bincount(label_map.ravel(), weights=max_probability.ravel(), minlength=self.num_labels)
        regions = []
        for class_id in range(1, self.num_labels):
            mask = label_map == class_id
            pixels = int(counts[class_id])
            regions.append(
                DefectRegion(
                    class_id=class_id,
                    label=self.id2label.get(class_id, str(class_id)),
                    mask=mask,
                    area_fraction=pixels / label_map.size,
                    confidence=float(confidence_sums[class_id] / pixels) if pixels else 0.0,
                    rle=rle_encode(mask) if pixels else "",
                    ruled_out=bool(excluded[class_id - 1]),
                )
            )
        return Segmentation(
            label_map=label_map,
            regions=regions,
            defective=bool(counts[1:].any()),
            probabilities=probabilities.numpy().astype(np.float16) if return_probabilities else None,
            stage1=None
            if stage1_probabilities is None
            else {label: float(p) for label, p in zip(self.defect_labels, stage1_probabilities)},
        )

    def min_areas(self, min_area: MinArea) -> list[int]:
        """``min_area`` as one pixel count per class 0..C-1 (background's is 0); None: the tuned ones.

        Raises:
            ValueError: an unknown class or a negative count, naming the classes.
        """
        if min_area is None:
            min_area = self.tuned_min_area
        if isinstance(min_area, Mapping):
            by_label = {label: class_id for class_id, label in self.id2label.items()}
            areas = [0] * self.num_labels
            for key, pixels in min_area.items():
                class_id = by_label.get(key, key)
                if not isinstance(class_id, int) or not 1 <= class_id < self.num_labels:
                    raise ValueError(
                        f"min_area has unknown defect class {key!r}; use ids 1..{self.num_labels - 1} "
                        f"or labels {self.defect_labels}."
                    )
                areas[class_id] = int(pixels)
        else:
            areas = [0] + [int(min_area)] * (self.num_labels - 1)
        if min(areas) < 0:
            raise ValueError(f"min_area must be 0 or more pixels, got {min_area!r}.")
        return areas

    def min_area_at_least(self, pixels: int) -> dict[int, int]:
        """The tuned per-class minimums, each raised to at least ``pixels``."""
        return {class_id: max(area, int(pixels)) for class_id, area in enumerate(self.min_areas(None)) if class_id}

    def stage1_probabilities(self, images: Sequence[Image.Image]) -> list[list[float]] | None:
        """Stage-1 probability of each defect class 1..C-1 per image; None without stage 1."""
        if self.stage1 is None:
            return None
        logits = self.stage1.forward(self.stage1.preprocess(list(images)))
        probabilities = self.stage1.probabilities(logits)[:, self._stage1_columns]
        return probabilities.tolist()

    # -- public entry points -----------------------------------------------------------------

    def segment(
        self, image: ImageSource, *, min_area: MinArea | None = None, return_probabilities: bool = False
    ) -> Segmentation:
        """Segment one image (a path, bytes or a PIL image) at its full resolution.

        Raises:
            common.image_io.ImageLoadError: the image cannot be read.
        """
        return self.segment_batch([image], min_area=min_area, return_probabilities=return_probabilities)[0]

    def segment_batch(
        self, images: Sequence[ImageSource], *, min_area: MinArea | None = None, return_probabilities: bool = False
    ) -> list[Segmentation]:
        """Segment several images; stage 1 runs on all of them in one call, segmentation per image."""
        self.min_areas(min_area)  # fail on a bad option before any inference
        rgb = [load_image(image) for image in images]
        stage1 = self.stage1_probabilities(rgb) or [None] * len(rgb)
        results = []
        for image, presence in zip(rgb, stage1):
            tiles, grid = self.preprocess(image)
            logits = self.stitch(self.forward_tiles(tiles), grid)
            results.append(
                self.postprocess(
                    logits, min_area=min_area, stage1_probabilities=presence, return_probabilities=return_probabilities
                )
            )
        return results

    @property
    def stage1_thresholds(self) -> dict[str, float]:
        """Each defect class's stage-1 threshold, by label; empty without a stage 1."""
        return dict(zip(self.defect_labels, self._stage1_thresholds))

    def describe(self) -> dict:
        """What the loaded models are and how images reach them, for people and logs."""
        config = self.model.config
        geometry = input_geometry(self.processor)
        stage1 = None
        if self.stage1 is not None:
            stage1 = {
                "source": self.stage1.source,
                "architecture": (self.stage1.model.config.architectures or [type(self.stage1.model).__name__])[0],
                "thresholds": self.stage1_thresholds,
                "runtime": self.stage1.runtime,
                "export_report": self.stage1.export_report,
            }
        return {
            "source": self.source,
            "architecture": (config.architectures or [type(self.model).__name__])[0],
            "model_type": config.model_type,
            "runtime": self.runtime,  # what runs the forward pass: "onnx" or "torch"
            "export_report": self.export_report,  # the parity report saved beside model.onnx
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "num_labels": self.num_labels,
            "id2label": dict(self.id2label),
            "input": {
                "resolution": "native" if self.resize_to is None else "resized",
                "resize_to": self.resize_to,
                "processor_size": geometry.input_size,  # ignored unless resize_to is set; see from_pretrained
                "pad_to_multiple_of": STRIDE,
                "tile_width": self.tile_width,
                "tile_height": self.tile_height,
                "tile_overlap": self.tile_overlap,
                "rescale_factor": self.input_rule.scale,
                "mean": geometry.mean,
                "std": geometry.std,
            },
            "stage1": stage1,
            MIN_AREA_KEY: self.tuned_min_area,
            "min_area_from": self.min_area_key,
        }
