"""A network as ONNX: export its bare forward (``pixel_values -> logits``) and run it with ONNX Runtime.

Training writes exports (``python -m train.export --format onnx``), the default model's cache
build writes one for the embedded classifier, and the pipelines serve them; all three go
through this module, so the graph that was checked is the graph that is served.

The exported graph is the network alone: preprocessing stays the checkpoint's image processor
(``common.preprocessing``), run by the pipeline exactly as for the eager model, and post-
processing (calibration, open-set rule, stage 1, minimum areas) stays in ``common``. The graph
takes ``pixel_values`` (float32, NCHW) and returns ``logits``; the batch size is dynamic, and so
are height and width when exported with ``dynamic_size`` (a segmenter that runs at each image's
own size). Weights are embedded in the one ``.onnx`` file (no external-data sidecar).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import torch

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"


class OnnxExportError(RuntimeError):
    """A network could not be exported or run as ONNX; the message names the model and the reason."""


class _Logits(torch.nn.Module):
    """The transformers model's forward, returning its logits tensor alone (what ONNX can carry)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def export_network(
    model: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike, *, dynamic_size: bool = False
) -> Path:
    """Export ``model`` (a transformers model in eval mode, float32) to one ONNX file at ``path``.

    Args:
        model: Called as ``model(pixel_values=...)``; its ``.logits`` become the graph's output.
        example: A ``pixel_values`` batch of the size the model is served at (for timm ``tf_``
            models with TF "same" padding the padding is fixed at this size).
        path: The ``.onnx`` file to write.
        dynamic_size: Also make height and width dynamic (a segmenter at native resolution).

    Raises:
        OnnxExportError: The exporter failed; the message says why.
    """
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = {0: batch}
    if dynamic_size:
        shapes.update({2: torch.export.Dim("height", min=32, max=8192), 3: torch.export.Dim("width", min=32, max=8192)})
    path = Path(path)
    # The exporter prints its progress on stdout; the callers show their own.
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        try:
            torch.onnx.export(
                _Logits(model.eval()).eval(),
                (example.float(),),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({**shapes},),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except Exception as error:  # the exporter raises many types; all mean "cannot export"
            raise OnnxExportError(f"torch.onnx.export failed for {type(model).__name__}: {error}") from error
    return path


class OnnxNetwork:
    """An exported network run by ONNX Runtime on the CPU, called like the eager one.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads; by default torch's, so both runtimes use the same cores.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are noise
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for a bad file
            raise OnnxExportError(f"ONNX Runtime cannot load {path}: {error}") from error
        self.path = Path(path)
        self.input_shape = tuple(
            dim if isinstance(dim, int) else None for dim in self.session.get_inputs()[0].shape
        )  # None for a dynamic dimension

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` (N, 3, H, W) -> float32 logits as a torch tensor."""
        array = np.ascontiguousarray(pixel_values.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(logits)


def logit_parity(eager: np.ndarray, exported: np.ndarray) -> dict[str, float]:
    """How close an export's logits are to eager's on the same inputs (single-label classifiers).

    Returns:
        ``max_abs_logit_diff`` and ``top1_agreement`` (share of rows with the same argmax).
    """
    eager, exported = np.asarray(eager, dtype=np.float64), np.asarray(exported, dtype=np.float64)
    if eager.shape != exported.shape:
        raise ValueError(f"logit shapes differ: eager {eager.shape}, exported {exported.shape}")
    return {
        "max_abs_logit_diff": float(np.abs(eager - exported).max()),
        "top1_agreement": float((eager.argmax(-1) == exported.argmax(-1)).mean()),
    }
