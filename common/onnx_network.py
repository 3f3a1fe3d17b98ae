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

An export is only served when it answers like eager: :func:`export_checked` exports, runs both
on the same inputs and refuses a graph whose logits differ by more than ``MAX_ABS_LOGIT_DIFF``
or that changes a top-1 class (classifiers) or a defect pixel (segmenters). Its figures go to
``export_report.json`` beside ``model.onnx`` (:func:`write_export_report`), which the app shows.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.checkpoint_files import EXPORT_REPORT_FILE

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"

# What "answers like eager" means. float32 graphs differ from eager only by the order of
# floating-point sums (about 1e-5 on the default model); 1e-3 leaves room for fused kernels
# and still catches a wrong graph, which is off by whole units.
MAX_ABS_LOGIT_DIFF = 1e-3
# A segmenter may move a few boundary pixels between classes whose logits tie to 1e-5, but
# never drop a pixel that eager paints as a defect.
MIN_PIXEL_AGREEMENT = 0.999
# Interleaved rounds timed at build to put a latency figure in the report.
LATENCY_ROUNDS = 10
# The exporter's passes log every rewrite at INFO; an app logging at INFO would show hundreds of lines.
_EXPORTER_LOGGERS = ("onnxscript", "onnx_ir")


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
    if example.shape[0] < 2:
        # torch.export specialises a dimension whose example size is 1 (SegFormer's batch came
        # out fixed at 1 that way), so the batch is traced at 2 to stay dynamic.
        example = example.repeat(2, *([1] * (example.dim() - 1)))
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = {0: batch}
    if dynamic_size:
        shapes.update({2: torch.export.Dim("height", min=32, max=8192), 3: torch.export.Dim("width", min=32, max=8192)})
    path = Path(path)
    # The exporter prints its progress on stdout; the callers show their own.
    with contextlib.redirect_stdout(io.StringIO()), _quiet_exporter_logs(), torch.no_grad():
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


@contextlib.contextmanager
def _quiet_exporter_logs():
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class OnnxNetwork:
    """An exported network run by ONNX Runtime on the CPU, called like the eager one.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads; by default torch's, so both runtimes use the same cores.
        output_name: The graph output returned (``logits``; an anomaly detector's features graph has ``embedding``).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, output_name: str = OUTPUT_NAME):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are noise
        # No busy-waiting between runs: on a small shared CPU, ORT's spinning workers took the cores
        # from PyTorch in the same process (Grad-CAM) and from other processes; on 2 busy cores the
        # default model ran in 16 ms without spinning and 42 ms with it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for a bad file
            raise OnnxExportError(f"ONNX Runtime cannot load {path}: {error}") from error
        self.path = Path(path)
        self.output_name = output_name
        self.input_shape = tuple(
            dim if isinstance(dim, int) else None for dim in self.session.get_inputs()[0].shape
        )  # None for a dynamic dimension

    def accepts(self, shape: Sequence[int]) -> bool:
        """True when the graph takes an input of ``shape`` (every fixed dimension matches)."""
        return len(shape) == len(self.input_shape) and all(
            fixed is None or fixed == size for fixed, size in zip(self.input_shape, shape)
        )

    def describe_input(self) -> str:
        """The input shape the graph takes, e.g. ``N x 3 x 224 x 224`` or ``N x 3 x H x W``."""
        names = ("N", "C", "H", "W")
        return " x ".join(str(size) if size is not None else names[i] for i, size in enumerate(self.input_shape))

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` (N, 3, H, W) -> float32 logits as a torch tensor.

        Raises:
            ValueError: The graph does not take this shape (it was exported at a fixed size).
            OnnxExportError: ONNX Runtime failed to run the graph.
        """
        if not self.accepts(pixel_values.shape):
            raise ValueError(
                f"{self.path} takes pixel_values of shape {self.describe_input()}, got "
                f"{' x '.join(map(str, pixel_values.shape))}."
            )
        array = np.ascontiguousarray(pixel_values.detach().cpu().numpy(), dtype=np.float32)
        try:
            (logits,) = self.session.run([self.output_name], {INPUT_NAME: array})
        except Exception as error:  # onnxruntime's own exception types, not importable by name
            raise OnnxExportError(f"ONNX Runtime failed to run {self.path}: {error}") from error
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


def label_map_parity(eager: torch.Tensor, exported: torch.Tensor, size: tuple[int, int]) -> dict[str, float]:
    """How close a segmenter's exported logits are to eager's, as the label maps people see.

    Both ``(N, C, h, w)`` logits are upsampled to ``size`` as the pipeline does before its argmax.

    Returns:
        ``max_abs_logit_diff``, ``pixel_agreement`` (share of pixels with the same class) and
        ``defect_pixel_agreement`` (share of eager's defect pixels, label > 0, that keep their class).
    """
    if eager.shape != exported.shape:
        raise ValueError(f"logit shapes differ: eager {tuple(eager.shape)}, exported {tuple(exported.shape)}")
    labels = [
        F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False).argmax(1)
        for logits in (eager, exported)
    ]
    same = labels[0] == labels[1]
    defect = labels[0] > 0
    return {
        "max_abs_logit_diff": float((eager.double() - exported.double()).abs().max()),
        "pixel_agreement": float(same.double().mean()),
        "defect_pixel_agreement": float(same[defect].double().mean()) if defect.any() else 1.0,
        "defect_pixels": int(defect.sum()),
    }


def parity_failure(parity: dict[str, float]) -> str | None:
    """Why an export does not answer like eager, or None when it does (see the limits above)."""
    if not parity["max_abs_logit_diff"] <= MAX_ABS_LOGIT_DIFF:  # also refuses NaN
        return f"logits differ from eager by up to {parity['max_abs_logit_diff']:.3g} (limit {MAX_ABS_LOGIT_DIFF:g})"
    if "top1_agreement" in parity and parity["top1_agreement"] < 1.0:
        return f"the top-1 class differs from eager on {1 - parity['top1_agreement']:.1%} of the check images"
    if "pixel_agreement" in parity and parity["pixel_agreement"] < MIN_PIXEL_AGREEMENT:
        return f"only {parity['pixel_agreement']:.3%} of pixels get eager's class (limit {MIN_PIXEL_AGREEMENT:.1%})"
    if "defect_pixel_agreement" in parity and parity["defect_pixel_agreement"] < 1.0:
        return f"{1 - parity['defect_pixel_agreement']:.3%} of eager's defect pixels change class"
    return None


def classifier_check_inputs(preprocess, input_size: tuple[int, int]) -> list[torch.Tensor]:
    """Fixed ``pixel_values`` batches to check a classifier's export on.

    Seeded noise at the served size (a batch of four and a batch of one, so the dynamic batch is
    exercised) and, when scikit-image is installed, its bundled photographs run through the
    checkpoint's own preprocessing ``preprocess`` (images -> pixel_values).
    """
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(n, 3, *input_size, generator=generator) for n in (4, 1)]
    photos = _bundled_photos()
    if photos:
        inputs.append(preprocess(photos).float())
    return inputs


def _bundled_photos() -> list:
    """A few of scikit-image's bundled photographs (public domain) as RGB PIL images; [] without it."""
    try:
        from skimage import data
    except ImportError:
        return []
    from PIL import Image

    return [Image.fromarray(getattr(data, name)()).convert("RGB") for name in ("chelsea", "coffee", "rocket", "camera")]


def _eager_logits(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(pixel_values=pixel_values).logits.float()


def _milliseconds(call) -> float:
    start = time.perf_counter()
    call()
    return 1000 * (time.perf_counter() - start)


def measure_latency(model: torch.nn.Module, network: OnnxNetwork, pixel_values: torch.Tensor, rounds: int) -> dict:
    """Median milliseconds of one eager and one ONNX call on ``pixel_values``, timed in turns.

    The two alternate round by round, so load from other processes on a shared machine falls on
    both alike. One untimed call each comes first: first calls allocate.
    """
    return latency_in_turns(
        lambda: _eager_logits(model, pixel_values), lambda: network(pixel_values), pixel_values, rounds
    )


def latency_in_turns(run_eager, run_onnx, pixel_values: torch.Tensor, rounds: int) -> dict:
    """Median milliseconds of ``run_eager()`` and ``run_onnx()`` on ``pixel_values``, as :func:`measure_latency`.

    For callers whose eager side is not a transformers model (an anomaly detector's feature extractor).
    """
    run_eager()
    run_onnx()
    timings = [(_milliseconds(run_eager), _milliseconds(run_onnx)) for _ in range(rounds)]
    eager_ms, onnx_ms = (float(np.median(column)) for column in zip(*timings))
    return {
        "latency_ms_eager": round(eager_ms, 2),
        "latency_ms_onnx": round(onnx_ms, 2),
        "speedup": round(eager_ms / onnx_ms, 2) if onnx_ms > 0 else math.nan,
        "latency_input": "x".join(map(str, pixel_values.shape)),
        "latency_rounds": rounds,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
    }


def cpu_flags(cpuinfo_text: str) -> list[str]:
    """The first ``flags`` (x86) or ``Features`` (ARM) line of a ``/proc/cpuinfo`` text, as a list."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return value.split()
    return []


def read_cpu_flags() -> list[str] | None:
    """This machine's CPU flags (``/proc/cpuinfo``); None where the kernel does not say (not Linux).

    The flags decide which kernels ONNX Runtime and PyTorch run (AVX-512, VNNI: whether int8 can
    saturate), so the export's report and the benchmarks print them beside their figures.
    """
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU model as the kernel reports it (``/proc/cpuinfo``), else what Python knows."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def export_checked(
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    segmentation: bool = False,
    dynamic_size: bool = False,
    latency_rounds: int = LATENCY_ROUNDS,
) -> dict:
    """Export ``model`` to ``path`` and check that the graph answers like eager on ``inputs``.

    Args:
        model: A transformers model in eval mode, float32.
        inputs: ``pixel_values`` batches; the first is the export example and the latency input
            (its first image).
        path: The ``.onnx`` file to write; removed again when the check fails.
        segmentation: Compare label maps (:func:`label_map_parity`) instead of top-1 classes.
        dynamic_size: Export with dynamic height and width (a segmenter).
        latency_rounds: Interleaved eager/ONNX rounds timed for the report; 0 skips timing.

    Returns:
        The export report: what was exported with what, the worst parity over ``inputs`` and
        the latency figures.

    Raises:
        OnnxExportError: The export, ONNX Runtime or the parity check failed; the message says which.
    """
    try:
        import onnxruntime
    except ImportError as error:
        raise OnnxExportError("onnxruntime is not installed (pip install -r requirements.txt)") from error

    path = Path(path)
    try:
        export_network(model, inputs[0], path, dynamic_size=dynamic_size)
        network = OnnxNetwork(path)
        worst: dict[str, float] = {}
        for pixel_values in inputs:
            eager, exported = _eager_logits(model, pixel_values), network(pixel_values)
            if segmentation:
                parity = label_map_parity(eager, exported, tuple(pixel_values.shape[-2:]))
            else:
                parity = logit_parity(eager.numpy(), exported.numpy())
            for key, value in parity.items():
                worst[key] = value if key not in worst else _worse(key, worst[key], value)
        failure = parity_failure(worst)
        if failure:
            raise OnnxExportError(f"the ONNX graph of {type(model).__name__} does not answer like eager: {failure}")
        report = {
            **{key: round(value, 8) if isinstance(value, float) else value for key, value in worst.items()},
            "check_inputs": sum(len(batch) for batch in inputs),
            "format": "onnx",
            "precision": "float32",
            "quantization": None,
            "dynamic_axes": "batch, height, width" if dynamic_size else "batch",
            "exporter": f"torch.onnx (dynamo), torch {torch.__version__}",
            "onnxruntime": onnxruntime.__version__,
        }
        if latency_rounds:
            report.update(measure_latency(model, network, inputs[0][:1], latency_rounds))
        return report
    except OnnxExportError:
        path.unlink(missing_ok=True)
        raise
    except ValueError as error:  # the graph's output does not have eager's shape
        path.unlink(missing_ok=True)
        raise OnnxExportError(f"the ONNX graph of {type(model).__name__} cannot be checked: {error}") from error


def _worse(key: str, old: float, new: float) -> float:
    """The worse of two parity figures: the larger difference, the smaller agreement."""
    if key == "max_abs_logit_diff":
        return max(old, new)
    if key == "defect_pixels":
        return old + new
    return min(old, new)


def write_export_report(directory: str | os.PathLike, report: dict) -> Path:
    """Write ``export_report.json`` into ``directory`` (beside its ``model.onnx``)."""
    path = Path(directory) / EXPORT_REPORT_FILE
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def read_export_report(directory: str | os.PathLike | None) -> dict | None:
    """``export_report.json`` of a directory as a dict; None when there is none or it cannot be read.

    The report only informs people (the app's Model tab); a damaged one must not stop the model
    from being served, so it is read leniently, like the saved metrics.
    """
    if directory is None:
        return None
    path = Path(directory) / EXPORT_REPORT_FILE
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) else None
