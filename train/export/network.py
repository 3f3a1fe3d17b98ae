"""A checkpoint loaded the way the pipelines serve it, and its bare network exported to float32 ONNX.

The graph is written by ``common.onnx_network.export_network`` (the one exporter the pipelines
and the default model's cache also use); this module decides what it is exported *at*:

- a classifier at the checkpoint's own input size (``common.preprocessing.input_geometry``),
  with height and width fixed in the graph. timm ``tf_`` models (the default model) use TF
  "same" padding, whose amounts depend on the input size, so the graph is only right at the
  size the processor produces; a fixed size makes ONNX Runtime refuse any other.
- a segmenter (``AutoModelForSemanticSegmentation``) with dynamic height and width, because the
  pipeline runs it at each image's own size (padded to multiples of 32) or on tiles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSemanticSegmentation

from common.calibration import CalibrationRecord
from common.checkpoint_files import INFERENCE_RESIZE_KEY
from common.checkpoints import load_image_processor, load_pretrained
from common.onnx_network import export_network
from common.preprocessing import batch_preprocessor, input_geometry
from common.segmentation_input import SegmenterInput
from common.segmentation_rules import DEFAULT_STAGE1_THRESHOLD

CLASSIFIER = "classifier"
MULTI_LABEL = "multi-label classifier"
SEGMENTER = "segmenter"
# The size a segmenter is traced at. Height and width differ on purpose: equal example sizes
# would let the tracer treat them as one symbol and tie the graph's height to its width.
SEGMENTER_EXAMPLE_SIZE = (256, 512)


@dataclass
class Network:
    """A checkpoint loaded for export: the eager model, its processor, and how it is served.

    Attributes:
        kind: ``CLASSIFIER``, ``MULTI_LABEL`` or ``SEGMENTER``.
        input_size: ``(h, w)`` a classifier is served at; for a segmenter its fixed resize
            (``inference_resize`` in its config) or None (each image at its own size).
        thresholds: A multi-label classifier's per-class decision thresholds.
    """

    directory: Path
    model: torch.nn.Module
    processor: object
    kind: str
    input_size: tuple[int, int] | None
    thresholds: list[float] | None = None

    @property
    def dynamic_size(self) -> bool:
        return self.kind == SEGMENTER

    @property
    def id2label(self) -> dict[int, str]:
        return {int(i): name for i, name in self.model.config.id2label.items()}

    def pixel_values(self, images: list[Image.Image]) -> list[torch.Tensor]:
        """Model inputs as served, one ``(1, 3, H, W)`` tensor per image."""
        if self.kind != SEGMENTER:
            preprocess = self._classifier_preprocess()
            return [preprocess([image]) for image in images]
        return [self._segmenter_pixels(image) for image in images]

    def _classifier_preprocess(self):
        if not hasattr(self, "_preprocess"):
            self._preprocess = batch_preprocessor(self.processor)
        return self._preprocess

    def _segmenter_pixels(self, image: Image.Image) -> torch.Tensor:
        # Exactly what pipelines.segmentation.DefectSegmenter.preprocess feeds the network.
        if not hasattr(self, "_input_rule"):
            self._input_rule = SegmenterInput.from_processor(self.processor)
        return self._input_rule.pixels(image, self.input_size)[0][None]

    def example(self) -> torch.Tensor:
        """A ``pixel_values`` batch of one at the size the graph is traced at."""
        if self.kind == SEGMENTER:
            return torch.zeros(1, 3, *SEGMENTER_EXAMPLE_SIZE)
        return torch.zeros(1, 3, *self.input_size)


def load_network(directory: str | os.PathLike) -> Network:
    """Load a checkpoint directory as the pipelines do: float32 weights, the saved processor.

    A config whose architecture is ``*ForSemanticSegmentation`` is a segmenter; anything else
    is a classifier, multi-label when its ``problem_type`` says so (the stage 1).

    Raises:
        common.checkpoints.ModelLoadError: the directory cannot be loaded.
    """
    directory = Path(directory)
    config = load_pretrained(AutoConfig, directory)
    segmenter = any(name.endswith("ForSemanticSegmentation") for name in config.architectures or ())
    auto_class = AutoModelForSemanticSegmentation if segmenter else AutoModelForImageClassification
    # float32 whatever the file holds, as the pipelines load it (shipped weights may be float16).
    model = load_pretrained(auto_class, directory, dtype=torch.float32).eval()
    processor = load_image_processor(directory)
    if segmenter:
        resize = getattr(model.config, INFERENCE_RESIZE_KEY, None)
        return Network(directory, model, processor, SEGMENTER, None if resize is None else tuple(resize))
    input_size = tuple(input_geometry(processor).input_size)
    if config.problem_type != "multi_label_classification":
        return Network(directory, model, processor, CLASSIFIER, input_size)
    thresholds = CalibrationRecord.load_or_uncalibrated(directory).thresholds
    if thresholds is None:
        thresholds = [DEFAULT_STAGE1_THRESHOLD] * config.num_labels
    return Network(directory, model, processor, MULTI_LABEL, input_size, thresholds)


def export_fp32(network: Network, path: str | os.PathLike) -> Path:
    """Write ``network``'s float32 ONNX graph to ``path`` (one file, dynamic batch).

    Raises:
        common.onnx_network.OnnxExportError: the exporter failed.
    """
    return export_network(network.model, network.example(), path, dynamic_size=network.dynamic_size)
