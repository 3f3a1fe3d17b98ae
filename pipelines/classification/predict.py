"""Image classification: preprocess -> forward -> postprocess, for any saved classifier.

The forward pass runs on ONNX Runtime when the checkpoint has an exported graph and PyTorch
otherwise (``runtime``, see ``pipelines.runtime``); everything around it is the same code.

>>> from pipelines.classification import ImageClassifier
>>> classifier = ImageClassifier.from_pretrained("default")
>>> classifier.classify("cat.jpg", top_k=1).predictions[0].label  # doctest: +SKIP
'tiger cat'
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from common.calibration import CalibrationFileError, CalibrationRecord
from common.checkpoint_files import saved_metrics
from common.checkpoints import ModelLoadError, load_image_processor, load_pretrained
from common.image_io import load_image
from common.onnx_network import classifier_check_inputs
from common.preprocessing import batch_preprocessor, input_geometry
from pipelines.runtime import EAGER, ServedByRuntime, ServedNetwork, check_graph_input, check_runtime, serve_network

ImageSource = str | os.PathLike | bytes | Image.Image


@dataclass(frozen=True)
class Prediction:
    """One class of a classifier's answer."""

    label: str
    score: float
    index: int


@dataclass(frozen=True)
class Classification:
    """A classifier's answer for one image: ranked classes and the open-set verdict."""

    predictions: list[Prediction]
    unknown: bool = False  # below the rejection threshold: none of the known classes
    open_set_score: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded classifier is, for people (the app's Model tab) and logs."""

    source: str
    architecture: str
    model_type: str
    parameters: int
    num_labels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    metrics: dict[str, float]
    trust: CalibrationRecord
    checkpoint_dir: str | None
    runtime: str = "torch"  # what runs the forward pass: "onnx" (ONNX Runtime) or "torch"
    export_report: dict | None = None  # the parity report saved beside model.onnx


class ImageClassifier(ServedByRuntime):
    """A classifier with its own preprocessing and trust settings, as saved in its checkpoint.

    ``runtime`` says what runs the forward pass (``"onnx"`` or ``"torch"``), ``network`` is the
    ONNX graph when it is ONNX, and ``export_report`` the parity report saved with that graph.
    ``model`` is the eager model either way (``describe``, Grad-CAM).
    """

    def __init__(self, model, processor, source: str, checkpoint_dir: str | None = None, served: ServedNetwork = EAGER):
        """See :meth:`from_pretrained`; ``served`` is what runs the forward pass.

        Raises:
            common.checkpoints.ModelLoadError: an ONNX graph of a fixed size the processor does not make.
        """
        self.model = model.eval()
        self.processor = processor
        self._preprocess = batch_preprocessor(processor)
        self.source = source
        self.checkpoint_dir = checkpoint_dir
        self.trust = CalibrationRecord.load_or_uncalibrated(checkpoint_dir)
        self.id2label = {int(i): name for i, name in model.config.id2label.items()}
        self.multi_label = model.config.problem_type == "multi_label_classification"
        if served.network is not None:
            check_graph_input(served.network, source, input_geometry(processor).input_size)
        self.served = served

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "default", runtime: str = "auto") -> ImageClassifier:
        """Load ``default``, a checkpoint directory or a hub id.

        Args:
            name_or_path: What to load.
            runtime: ``"auto"`` (ONNX Runtime when the directory holds ``model.onnx``, else
                PyTorch), ``"torch"`` or ``"onnx"``; see ``pipelines.runtime``.

        Raises:
            ValueError: ``runtime`` is not one of ``pipelines.runtime.RUNTIMES``.
            common.checkpoints.ModelLoadError: with the reason and the fix.
        """
        from transformers import AutoModelForImageClassification

        check_runtime(runtime)
        # float32 whatever the file holds: checkpoints may ship in fp16 to stay small, and
        # most CPU kernels are fastest (or only exist) in float32.
        model = load_pretrained(AutoModelForImageClassification, name_or_path, dtype=torch.float32)
        processor = load_image_processor(name_or_path)
        location = model.config._name_or_path
        checkpoint_dir = location if location and Path(location).is_dir() else None
        size = input_geometry(processor).input_size
        served = serve_network(
            runtime,
            str(name_or_path),
            checkpoint_dir,
            model,
            lambda: classifier_check_inputs(batch_preprocessor(processor), size),
        )
        try:
            return cls(model, processor, source=str(name_or_path), checkpoint_dir=checkpoint_dir, served=served)
        except CalibrationFileError as error:
            raise ModelLoadError(str(error)) from error

    def eager(self) -> ImageClassifier:
        """This classifier with PyTorch running its forward pass (itself when it already does).

        It shares the loaded weights and settings; Grad-CAM explains with it, as CAMs need the
        eager network's activations and gradients.
        """
        if self.network is None:
            return self
        eager = copy.copy(self)
        eager.served = EAGER
        return eager

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB images -> the ``pixel_values`` batch the checkpoint expects."""
        return self._preprocess(images)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One model call (ONNX Runtime or PyTorch, see ``runtime``); returns logits."""
        if self.network is not None:
            return self.network(pixel_values)
        with torch.inference_mode():
            return self.model(pixel_values=pixel_values).logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities (softmax of logits / T; sigmoid for multi-label)."""
        if self.multi_label:
            return logits.float().sigmoid()
        return torch.from_numpy(self.trust.probabilities(logits.detach().float().cpu().numpy())).float()

    def postprocess(self, logits: torch.Tensor, top_k: int = 5) -> list[Classification]:
        """Logits -> the ``top_k`` most likely classes of each image and its open-set verdict."""
        probabilities = self.probabilities(logits)
        scores_for_rules = logits.detach().float().cpu().numpy()
        k = max(1, min(top_k, probabilities.shape[-1]))
        scores, indices = probabilities.topk(k, dim=-1)
        unknown = self.trust.is_unknown(scores_for_rules)
        open_set = self.trust.open_set_score(scores_for_rules)
        results = []
        for row, (row_scores, row_indices) in enumerate(zip(scores.tolist(), indices.tolist())):
            predictions = [Prediction(self.id2label.get(i, str(i)), s, i) for s, i in zip(row_scores, row_indices)]
            results.append(
                Classification(
                    predictions=predictions,
                    unknown=bool(unknown[row]),
                    open_set_score=None if open_set is None else float(open_set[row]),
                    threshold=self.trust.rejection_threshold,
                )
            )
        return results

    def classify(self, image: ImageSource, top_k: int = 5) -> Classification:
        """Classify one image (a path, bytes or a PIL image).

        Raises:
            common.image_io.ImageLoadError: the image cannot be read.
        """
        return self.classify_batch([image], top_k=top_k)[0]

    def classify_batch(self, images: Sequence[ImageSource], top_k: int = 5) -> list[Classification]:
        """Classify several images in one forward pass."""
        rgb = [load_image(image) for image in images]
        return self.postprocess(self.forward(self.preprocess(rgb)), top_k=top_k)

    def describe(self) -> ModelInfo:
        """Architecture, size, preprocessing, metrics and trust settings of the loaded model."""
        config = self.model.config
        geometry = input_geometry(self.processor)
        architecture = getattr(config, "architecture", None) or (config.architectures or [type(self.model).__name__])[0]
        return ModelInfo(
            source=self.source,
            architecture=architecture,
            model_type=config.model_type,
            parameters=sum(p.numel() for p in self.model.parameters()),
            num_labels=config.num_labels,
            input_size=geometry.input_size,
            mean=geometry.mean,
            std=geometry.std,
            interpolation=geometry.interpolation,
            metrics=saved_metrics(self.checkpoint_dir) if self.checkpoint_dir else {},
            trust=self.trust,
            checkpoint_dir=self.checkpoint_dir,
            runtime=self.runtime,
            export_report=self.export_report,
        )
