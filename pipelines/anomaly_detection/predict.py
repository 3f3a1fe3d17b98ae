"""Anomaly detection: preprocess -> forward -> postprocess, for a detector trained on good images.

The backbone's hooked layers embed every patch of the image (``common.anomaly_features``); each
patch is scored by its distance to the nearest good patch of the product's memory bank, the
image by its worst patch (``common.anomaly_scores``); both are divided by the product's
threshold, fitted on good images only (``common.anomaly_threshold``), so 1.0 is the line:
above it the image is anomalous, and the map's pixels above it are the anomalous region.

>>> from pipelines.anomaly_detection import AnomalyDetector
>>> detector = AnomalyDetector.from_pretrained("models/steel-anomaly")  # doctest: +SKIP
>>> result = detector.detect("strip.png")  # doctest: +SKIP
>>> round(result.score, 2), result.anomalous, result.anomaly_map.shape  # doctest: +SKIP
(1.84, True, (256, 1600))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from transformers import AutoModelForImageClassification

from common.anomaly_features import LayerError, PatchFeatureExtractor, pixel_values
from common.anomaly_files import AnomalyModelError, backbone_source, load_anomaly_config, load_memory_banks
from common.anomaly_onnx import OnnxPatchFeatureExtractor, served_extractor
from common.anomaly_scores import anomaly_maps, image_scores, patch_score_grids
from common.anomaly_threshold import is_anomalous
from common.checkpoint_files import ANOMALY_ONNX_FILE, MEMORY_BANK_FILE, WEIGHTS_FILE
from common.checkpoints import ModelLoadError, load_pretrained
from common.image_io import load_image
from common.onnx_network import OnnxExportError
from pipelines.runtime import check_runtime

ImageSource = str | os.PathLike | bytes | Image.Image


@dataclass(frozen=True, eq=False)  # eq=False: comparing or hashing NumPy arrays is ambiguous
class AnomalyResult:
    """A detector's answer for one image.

    Attributes:
        product: The product whose memory bank and threshold were used.
        score: The image score divided by the threshold (1.0 = the threshold).
        anomalous: ``score > 1``.
        anomaly_map: float32 ``(H, W)`` at the image's size, normalised like ``score``.
        region: bool ``(H, W)``, the pixels whose map value is above 1.
        outline: bool ``(H, W)``, the one-pixel boundary of ``region`` (for drawing it).
        raw_score: The image score before normalising (a feature distance).
        threshold: The product's threshold on ``raw_score``.
    """

    product: str
    score: float
    anomalous: bool
    anomaly_map: np.ndarray
    region: np.ndarray
    outline: np.ndarray
    raw_score: float
    threshold: float

    @property
    def area_fraction(self) -> float:
        """Share of the image in the anomalous region."""
        return float(self.region.mean()) if self.region.size else 0.0

    def anomalous_at(self, threshold: float = 1.0) -> bool:
        """The verdict with the line moved to ``threshold`` (normalised: 1.0 is the fitted one)."""
        return bool(is_anomalous(self.score / threshold))

    def region_at(self, threshold: float = 1.0) -> np.ndarray:
        """The pixels whose map is above ``threshold`` (normalised), without scoring the image again."""
        return self.region if threshold == 1.0 else np.asarray(is_anomalous(self.anomaly_map / np.float32(threshold)))

    def area_fraction_at(self, threshold: float = 1.0) -> float:
        """Share of the image above ``threshold`` (normalised)."""
        region = self.region_at(threshold)
        return float(region.mean()) if region.size else 0.0


def region_outline(region: np.ndarray) -> np.ndarray:
    """The pixels of ``region`` that touch a pixel outside it (or the image border)."""
    if not region.any():
        return np.zeros_like(region, dtype=bool)
    inner = ndimage.binary_erosion(region, structure=np.ones((3, 3), bool), border_value=0)
    return region & ~inner


class AnomalyDetector:
    """A PatchCore detector: backbone layers, one memory bank and threshold per product.

    Use :meth:`from_pretrained`; ``detect`` / ``detect_batch`` take paths, bytes or PIL images.
    """

    def __init__(
        self,
        extractor: PatchFeatureExtractor,
        config,
        banks: dict[str, torch.Tensor],
        source: str,
        backbone_dir: str | os.PathLike | None = None,
    ) -> None:
        self.extractor = extractor
        self.config = config
        self.banks = banks
        self.source = source
        # Where the backbone's weights were loaded from (the detector's folder, or the default model's cache).
        self.backbone_dir = None if backbone_dir is None else Path(backbone_dir)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, runtime: str = "auto") -> AnomalyDetector:
        """Load a detector directory written by ``python -m train.anomaly_detection`` (or its ONNX export).

        ``runtime`` is what embeds the patches: ``"auto"`` (ONNX Runtime when the folder holds
        ``anomaly_features.onnx``, written by ``python -m train.export DIR OUT --format onnx``),
        ``"torch"`` or ``"onnx"``; the nearest-neighbour search runs in PyTorch either way.

        Raises:
            common.checkpoints.ModelLoadError: not a detector directory, or damaged; the message says what to do.
        """
        check_runtime(runtime)
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise ModelLoadError(
                f"Anomaly detector '{directory}' is not a directory; give the folder written by "
                "python -m train.anomaly_detection"
            )
        try:
            config = load_anomaly_config(path)
            banks = load_memory_banks(path, config)
            backbone = backbone_source(path, config)
        except AnomalyModelError as error:
            raise ModelLoadError(str(error)) from error
        # The default backbone comes from the installed package (built once into the cache), not the folder.
        model = load_pretrained(AutoModelForImageClassification, backbone)
        try:
            extractor = served_extractor(
                path, config, PatchFeatureExtractor(model, config.layers, pad=config.pad), runtime
            )
        except (LayerError, AnomalyModelError, OnnxExportError) as error:
            raise ModelLoadError(f"Anomaly detector '{directory}': {error}") from error
        return cls(extractor, config, banks, str(directory), backbone_dir=model.config._name_or_path)

    @property
    def runtime(self) -> str:
        """What embeds the patches: ``"onnx"`` or ``"torch"``."""
        return "onnx" if isinstance(self.extractor, OnnxPatchFeatureExtractor) else "torch"

    @property
    def products(self) -> list[str]:
        """The products this detector has a memory bank for, in training order."""
        return list(self.config.products)

    def resolve_product(self, product: str | None) -> str:
        """The product to use: the named one, or the only one.

        Raises:
            ValueError: an unknown product, or none named for a multi-product detector.
        """
        if product is None:
            if len(self.products) == 1:
                return self.products[0]
            raise ValueError(
                f"this detector knows {len(self.products)} products ({', '.join(self.products)}); name one "
                "(product=... or --product)"
            )
        if product not in self.config.products:
            raise ValueError(f"product {product!r} is not one of this detector's: {', '.join(self.products)}")
        return product

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return pixel_values(images, self.config.input_size, self.config.mean, self.config.std)

    def forward(self, pixels: torch.Tensor, product: str) -> torch.Tensor:
        """``(B, h, w)`` patch scores (raw distances) against the product's memory bank."""
        return patch_score_grids(self.extractor(pixels), self.banks[product])

    def postprocess(self, grids: torch.Tensor, images: Sequence[Image.Image], product: str) -> list[AnomalyResult]:
        threshold = self.config.products[product].threshold
        raw = image_scores(grids)
        maps = anomaly_maps(
            grids, self.config.input_size, [(i.height, i.width) for i in images], sigma=self.config.sigma
        )
        results = []
        for score, heat in zip(raw, maps):
            heat = heat / np.float32(threshold)
            region = np.asarray(is_anomalous(heat))
            results.append(
                AnomalyResult(
                    product=product,
                    score=float(score / threshold),
                    anomalous=bool(is_anomalous(score / threshold)),
                    anomaly_map=heat,
                    region=region,
                    outline=region_outline(region),
                    raw_score=float(score),
                    threshold=float(threshold),
                )
            )
        return results

    def detect_batch(self, images: Sequence[ImageSource], product: str | None = None) -> list[AnomalyResult]:
        """Score several images of one product in one forward pass.

        Raises:
            ValueError: no such product, or none named for a multi-product detector.
            common.image_io.ImageLoadError: an image that cannot be read.
        """
        name = self.resolve_product(product)
        loaded = [load_image(image) for image in images]
        if not loaded:
            return []
        return self.postprocess(self.forward(self.preprocess(loaded), name), loaded, name)

    def detect(self, image: ImageSource, product: str | None = None) -> AnomalyResult:
        """Score one image: see :class:`AnomalyResult`."""
        return self.detect_batch([image], product)[0]

    def held_out_scores(self, product: str | None = None) -> list[float]:
        """The product's held-out good images' raw scores ([] for a detector written before they were kept)."""
        return list(self.config.products[self.resolve_product(product)].held_out_scores)

    def weight_files(self) -> list[Path]:
        """The files whose bytes decide a score: the memory banks, then the backbone's weights."""
        files = [Path(self.source) / MEMORY_BANK_FILE]
        if self.runtime == "onnx":  # the graph, not the PyTorch weights, then computes the features
            return [*files, Path(self.source) / ANOMALY_ONNX_FILE]
        if self.backbone_dir is not None and (self.backbone_dir / WEIGHTS_FILE).is_file():
            files.append(self.backbone_dir / WEIGHTS_FILE)
        return files

    def describe(self) -> dict:
        """What the detector is, for logs and the app: backbone, layers, input size, products and thresholds."""
        return {
            "source": self.source,
            "backbone": self.config.backbone,
            "layers": list(self.config.layers),
            "input_size": list(self.config.input_size),
            "pad": self.config.pad,
            "products": {name: rule.threshold for name, rule in self.config.products.items()},
        }
