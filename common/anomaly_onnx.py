"""An anomaly detector's feature extractor as ONNX: export it, run it, and check its scores against eager.

The graph is exactly what ``PatchFeatureExtractor.forward`` returns: the backbone up to the
deepest hooked layer, the locally aware pooling, the upsampling and the concatenation, from
``pixel_values`` (float32, NCHW, the detector's fixed input size, dynamic batch) to the
``(B, C, h, w)`` ``embedding``. Scoring (nearest-neighbour distances to the memory bank, the
maps, the threshold) stays the same PyTorch code on both runtimes (``common.anomaly_scores``):
the bank is data, not network, and ONNX would only copy it into the graph.

An export is only written when it scores like eager (:func:`feature_parity`,
:func:`parity_failure`): the normalised image scores and anomaly maps may differ by at most
``MAX_ABS_SCORE_DIFF`` (scores are divided by the threshold, so the tolerance is a share of it),
and no image may change its verdict.

>>> extractor = OnnxPatchFeatureExtractor("models/steel-anomaly-onnx/anomaly_features.onnx")  # doctest: +SKIP
>>> extractor(torch.zeros(1, 3, 64, 256)).shape  # doctest: +SKIP
torch.Size([1, 152, 8, 32])
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForImageClassification

from common.anomaly_features import PatchFeatureExtractor
from common.anomaly_files import AnomalyConfig, AnomalyModelError, backbone_source
from common.anomaly_scores import anomaly_maps, image_scores, patch_score_grids
from common.anomaly_threshold import is_anomalous
from common.checkpoint_files import ANOMALY_ONNX_FILE
from common.checkpoints import load_pretrained
from common.onnx_network import INPUT_NAME, OnnxExportError, OnnxNetwork

logger = logging.getLogger("vispect.anomaly_onnx")

EMBEDDING_NAME = "embedding"
# float32 graphs differ from eager by the order of sums (about 2e-5 of a feature on the default
# backbone); as a share of the threshold 1e-3 leaves room for that and catches a wrong graph.
MAX_ABS_SCORE_DIFF = 1e-3
# The TorchScript exporter's opset: 18 has every operator the extractor uses (AveragePool, Resize).
OPSET = 18


class _Embedding(nn.Module):
    """The extractor's forward as a plain module: what the exporter traces."""

    def __init__(self, extractor: PatchFeatureExtractor):
        super().__init__()
        self.extractor = extractor

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.extractor(pixel_values)


def export_feature_extractor(
    extractor: PatchFeatureExtractor, input_size: Sequence[int], path: str | os.PathLike
) -> Path:
    """Export ``extractor`` at ``input_size`` (h, w), batch dynamic, to one ONNX file at ``path``.

    The TorchScript exporter (``dynamo=False``) is used on purpose. The extractor stops the
    backbone with an exception raised in the deepest hook; torch 2.14's default dynamo exporter
    traces non-strictly and then fails on the module stack that exception leaves open
    ("Unexpected key ...blocks.4"), and its strict mode refuses the extractor's thread lock.
    The TorchScript tracer runs the Python as it is and records the operators that ran, so the
    graph is the eager code path itself (the default backbone at 64 x 256: 12 s against 86 s
    for strict dynamo with the lock removed, same figures).

    Raises:
        OnnxExportError: the exporter failed; the message says why.
    """
    # Traced at batch 2, as common.onnx_network does, so no size-1 batch is baked into a shape.
    example = torch.zeros(2, 3, int(input_size[0]), int(input_size[1]))
    path = Path(path)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # The exporter warns that it is the legacy one on every call; the docstring says why it is used.
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        # The padding's crop reads sizes as ints; they are constants of the one exported input size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(
                _Embedding(extractor).eval(),
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[EMBEDDING_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, EMBEDDING_NAME: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        except Exception as error:  # the exporter raises many types; all mean "cannot export"
            raise OnnxExportError(f"torch.onnx.export failed for the anomaly feature extractor: {error}") from error
    return path


class OnnxPatchFeatureExtractor:
    """An exported feature extractor run by ONNX Runtime, called like ``PatchFeatureExtractor``.

    Args:
        path: The ``.onnx`` file (``anomaly_features.onnx`` in a detector's directory).
        threads: Intra-op threads; by default torch's.

    Raises:
        OnnxExportError: ONNX Runtime cannot load the file.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.network = OnnxNetwork(path, threads, output_name=EMBEDDING_NAME)
        self.path = self.network.path

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values (B, 3, H, W)`` -> float32 ``(B, C, h, w)`` embedding, a torch tensor.

        Raises:
            ValueError: not the input size the graph was exported at.
            OnnxExportError: ONNX Runtime failed to run the graph.
        """
        return self.network(pixel_values)


def load_eager_extractor(directory: str | os.PathLike, config: AnomalyConfig) -> PatchFeatureExtractor:
    """The detector's backbone (its own folder's, or the embedded default) with its layers hooked.

    Raises:
        common.anomaly_files.AnomalyModelError: the backbone's files are missing.
        common.checkpoints.ModelLoadError: the backbone cannot be loaded.
        common.anomaly_features.LayerError: a layer the backbone does not have.
    """
    model = load_pretrained(AutoModelForImageClassification, backbone_source(directory, config))
    return PatchFeatureExtractor(model, config.layers, pad=config.pad)


def served_extractor(
    directory: str | os.PathLike, config: AnomalyConfig, eager: PatchFeatureExtractor, runtime: str
) -> PatchFeatureExtractor | OnnxPatchFeatureExtractor:
    """What embeds the patches for ``runtime`` (``"auto"``, ``"torch"`` or ``"onnx"``, already checked).

    ``auto`` takes the ONNX graph when the directory holds one and onnxruntime imports;
    ``onnx`` requires it. Either way the graph must take the detector's input size.

    Raises:
        AnomalyModelError: ``onnx`` without a graph, or a graph of another input size; the message
            gives the command that makes one.
        OnnxExportError: ``onnx`` and ONNX Runtime cannot load the graph (``auto`` logs it and
            serves eager).
    """
    path = Path(directory) / ANOMALY_ONNX_FILE
    command = f"python -m train.export {directory} OUT --format onnx"
    if runtime == "torch" or (runtime == "auto" and not (path.is_file() and _onnxruntime_installed())):
        return eager
    if not path.is_file():
        raise AnomalyModelError(f"'{directory}' has no {ANOMALY_ONNX_FILE} for runtime 'onnx': run {command}.")
    try:
        extractor = OnnxPatchFeatureExtractor(path)
    except OnnxExportError as error:
        if runtime == "onnx":
            raise
        # As pipelines.runtime does for classifiers: "auto" serves the same answers with PyTorch, only slower.
        logger.warning("%s; serving the anomaly detector with PyTorch", error)
        return eager
    if not extractor.network.accepts((1, 3, *config.input_size)):
        raise AnomalyModelError(
            f"{path} takes {extractor.network.describe_input()}, but the detector's input size is "
            f"{config.input_size[0]} x {config.input_size[1]}: export it again with {command}."
        )
    return extractor


def _onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def feature_parity(
    eager: torch.Tensor, exported: torch.Tensor, config: AnomalyConfig, banks: dict[str, torch.Tensor]
) -> dict:
    """How the scores of ``exported`` embeddings compare with ``eager``'s, over every product.

    Both ``(N, C, h, w)`` embeddings are scored as the pipeline scores them: nearest-neighbour
    grids against each product's bank, the worst patch, the smoothed map at the input size,
    all divided by the product's threshold.

    Returns:
        ``max_abs_embedding_diff``, ``max_abs_score_diff`` and ``max_abs_map_diff`` (normalised:
        1.0 is the threshold), ``verdict_agreement`` (share of image-product pairs with the same
        verdict), ``anomalous_eager`` (pairs eager calls anomalous) and ``images``.

    Raises:
        ValueError: the two embeddings' shapes differ.
    """
    if eager.shape != exported.shape:
        raise ValueError(f"embedding shapes differ: eager {tuple(eager.shape)}, exported {tuple(exported.shape)}")
    scores, maps, same, anomalous = [], [], [], 0
    for product, rule in config.products.items():
        both = [_normalised(embedding, banks[product], rule.threshold, config) for embedding in (eager, exported)]
        (eager_scores, eager_maps), (onnx_scores, onnx_maps) = both
        scores.append(np.abs(eager_scores - onnx_scores).max())
        maps.append(max(float(np.abs(e - x).max()) for e, x in zip(eager_maps, onnx_maps)))
        same.extend(is_anomalous(eager_scores) == is_anomalous(onnx_scores))
        anomalous += int(is_anomalous(eager_scores).sum())
    return {
        "max_abs_embedding_diff": float((eager.double() - exported.double()).abs().max()),
        "max_abs_score_diff": float(max(scores)),
        "max_abs_map_diff": float(max(maps)),
        "verdict_agreement": float(np.mean(same)),
        "anomalous_eager": anomalous,
        "images": int(eager.shape[0]),
    }


def _normalised(embedding: torch.Tensor, bank: torch.Tensor, threshold: float, config: AnomalyConfig):
    grids = patch_score_grids(embedding, bank)
    heat = anomaly_maps(grids, config.input_size, sigma=config.sigma)
    return image_scores(grids) / threshold, [m / np.float32(threshold) for m in heat]


def parity_failure(figures: dict) -> str | None:
    """Why an export does not score like eager, or None when it does (``MAX_ABS_SCORE_DIFF``, same verdicts)."""
    for key, what in (("max_abs_score_diff", "normalised image scores"), ("max_abs_map_diff", "anomaly maps")):
        if not figures[key] <= MAX_ABS_SCORE_DIFF:  # also refuses NaN
            return f"its {what} differ from eager by up to {figures[key]:.3g} (limit {MAX_ABS_SCORE_DIFF:g})"
    if figures["verdict_agreement"] < 1.0:
        return f"{1 - figures['verdict_agreement']:.1%} of the check images change verdict (anomalous or not)"
    return None
