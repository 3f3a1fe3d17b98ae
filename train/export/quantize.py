"""int8 quantization of an exported graph with ONNX Runtime, as named variants to try and compare.

``--quantize int8`` is static quantization (``quantize_static``, QDQ format, per-channel
weights): activation ranges are calibrated on images preprocessed exactly as served, after
ORT's pre-processing step (``quant_pre_process``: shape inference and graph optimisation, which
folds what it can before ranges are measured). ``--quantize dynamic`` is ``quantize_dynamic``:
int8 weights, activations quantized on the fly, no calibration.

Plain int8 of a whole small CNN often changes too many answers (a trial on the default model:
60% top-1 agreement with eager), so a list of variants is tried, each measured on held-out
images, and the export keeps the best one that meets the agreement floor (``parity.py``). A
variant can keep groups of nodes in float (``NODE_GROUPS``), pick the calibration method, and
pass ORT's ``extra_options``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from common.onnx_network import INPUT_NAME

STATIC = "int8"
DYNAMIC = "dynamic"
QUANTIZE_MODES = (STATIC, DYNAMIC)
# Activation functions that ORT folds into the quantized op before them. A node kept in float
# keeps its activation in float too: otherwise the activation alone is quantized, at the range of
# its unclipped input (hundreds for a depthwise conv), which is far worse than quantizing both.
_FOLLOWING_ACTIVATIONS = {"Clip", "Relu"}
_LINEAR_OPS = {"Conv", "Gemm", "MatMul"}
# MinMax calibration measures this many images at a time and merges their ranges (ORT's
# CalibStridedMinMax), so memory stays bounded (a 256x1600 SegFormer's intermediate tensors are
# GBs per few images). Not CalibMaxIntermediateOutputs: onnxruntime 1.32's MinMaxCalibrater drops
# what it collected at that count without merging it, so only the last few images would count.
CALIBRATION_CHUNK = 8


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _with_activations(graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto]) -> list[str]:
    consumers = _consumers(graph)
    names = []
    for node in nodes:
        names.append(node.name)
        names += [c.name for c in consumers.get(node.output[0], []) if c.op_type in _FOLLOWING_ACTIVATIONS]
    return names


def _first_conv(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [node for node in graph.node if node.op_type in _LINEAR_OPS and INPUT_NAME in node.input]


def _last_linear(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    # The classifier head (Gemm/MatMul of a classifier, the 1x1 Conv of a SegFormer decode head).
    linear = [node for node in graph.node if node.op_type in _LINEAR_OPS]
    return linear[-1:]


def _depthwise_convs(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [
        node
        for node in graph.node
        if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
    ]


def _depthwise_blocks(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    # A depthwise conv and the pointwise conv that reads its activation: keeping only the
    # depthwise conv in float still quantizes the tensor between them (as the pointwise conv's
    # input), and that tensor (sparse ReLU6 output with a long tail) is the worst-quantized one.
    consumers = _consumers(graph)
    nodes = []
    for node in _depthwise_convs(graph):
        nodes.append(node)
        outputs = [node.output[0]]
        outputs += [c.output[0] for c in consumers.get(node.output[0], []) if c.op_type in _FOLLOWING_ACTIVATIONS]
        nodes += [c for name in outputs for c in consumers.get(name, []) if c.op_type == "Conv" and c not in nodes]
    return nodes


def _head_conv(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    # The last conv (EfficientNet's 1x1 head before pooling, a SegFormer's classifier).
    return [node for node in graph.node if node.op_type == "Conv"][-1:]


def _norms_and_softmax(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [node for node in graph.node if node.op_type in {"LayerNormalization", "Softmax"}]


# Groups of nodes a variant may keep in float, found in the pre-processed graph.
NODE_GROUPS = {
    "first_conv": _first_conv,
    "last_linear": _last_linear,
    "depthwise_conv": _depthwise_convs,
    "depthwise_block": _depthwise_blocks,
    "head_conv": _head_conv,
    "norm_softmax": _norms_and_softmax,
}


@dataclass(frozen=True)
class Variant:
    """One way of quantizing, as tried and reported.

    Attributes:
        name: Short name for the report and ``--int8_variants``.
        mode: ``STATIC`` (calibrated) or ``DYNAMIC``.
        method: ``CalibrationMethod`` name: ``MinMax``, ``Percentile`` or ``Entropy``.
        keep_float: ``NODE_GROUPS`` kept in float.
        extra_options: ORT ``extra_options`` (e.g. ``ActivationSymmetric``).
        activation_type: ``QInt8`` or ``QUInt8`` activations (static only).
        max_images: Calibration images used at most (the histogram methods are slow).
    """

    name: str
    mode: str = STATIC
    method: str = "MinMax"
    keep_float: tuple[str, ...] = ()
    extra_options: dict = field(default_factory=dict, hash=False)
    activation_type: str = "QInt8"
    max_images: int | None = None

    def options(self, calibration_images: int | None = None) -> dict:
        """The ``extra_options`` passed to ORT for ``calibration_images`` images."""
        options = dict(self.extra_options)
        if (
            self.mode == STATIC
            and self.method == "MinMax"
            and not options.get("CalibMovingAverage")
            and calibration_images
        ):
            # Min and max merge exactly, so measuring in chunks gives the ranges of all images at once.
            options.setdefault("CalibStridedMinMax", calibration_stride(calibration_images))
        return options

    def settings(self) -> dict:
        """What the report records about this variant."""
        settings = {"mode": self.mode, "per_channel": True, "keep_float": list(self.keep_float)}
        if self.mode == STATIC:
            settings.update(
                quant_format="QDQ",
                calibration_method=self.method,
                activation_type=self.activation_type,
                weight_type="QInt8",
                max_calibration_images=self.max_images,
            )
        else:
            settings["weight_type"] = "QInt8"
        return {**settings, "extra_options": self.options()}


# Tried in this order by default. On the default model (README, "Export") every all-int8
# variant agreed with eager on 80-83% of top-1 answers, and keeping the depthwise blocks and the
# head in float on 91%; each is still tried, since another model may fare better.
STATIC_VARIANTS = (
    Variant("minmax"),
    Variant("minmax_float_ends", keep_float=("first_conv", "last_linear")),
    Variant("entropy", method="Entropy", max_images=64),
    Variant("percentile", method="Percentile", max_images=64),
    Variant("minmax_float_depthwise", keep_float=("depthwise_block", "head_conv", "last_linear", "norm_softmax")),
)
# Measured once on the default model and worse than "minmax" there; kept to be named with
# --int8_variants, so those figures can be reproduced.
MORE_STATIC_VARIANTS = (
    Variant("minmax_uint8", activation_type="QUInt8"),
    Variant("minmax_symmetric", extra_options={"ActivationSymmetric": True}),
    Variant("minmax_moving_average", extra_options={"CalibMovingAverage": True}),
)
DYNAMIC_VARIANTS = (Variant("dynamic", mode=DYNAMIC),)
VARIANTS = {variant.name: variant for variant in STATIC_VARIANTS + MORE_STATIC_VARIANTS + DYNAMIC_VARIANTS}


def variants_for(mode: str, names: Sequence[str] | None = None) -> list[Variant]:
    """The variants ``--quantize mode`` tries: all of that mode, or the ones named.

    Raises:
        ValueError: an unknown name, or one of the other mode.
    """
    if not names:
        return list(STATIC_VARIANTS if mode == STATIC else DYNAMIC_VARIANTS)
    by_name = {variant.name: variant for variant in VARIANTS.values() if variant.mode == mode}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(
            f"--int8_variants {','.join(unknown)}: unknown for --quantize {mode}; choose from {sorted(by_name)}"
        )
    return [by_name[name] for name in names]


def prepare_for_quantization(fp32_path: str | os.PathLike, path: str | os.PathLike) -> Path:
    """ORT's pre-processing step (shape inference, graph optimisation) before calibration."""
    quant_pre_process(str(fp32_path), str(path))
    return Path(path)


def calibration_stride(count: int) -> int:
    """Images per calibration chunk: the largest divisor of ``count`` up to ``CALIBRATION_CHUNK``.

    ORT refuses a stride that does not divide the number of images, and dropping images would
    change the ranges.
    """
    return max(d for d in range(1, min(CALIBRATION_CHUNK, count) + 1) if count % d == 0)


class _Inputs(CalibrationDataReader):
    """Served ``pixel_values`` for calibration, one batch of one per call (images differ in size).

    ``set_range`` is how ORT's strided MinMax calibration walks the images a chunk at a time.
    """

    def __init__(self, inputs: Sequence[np.ndarray]):
        self._all = list(inputs)
        self.set_range(0, len(self._all))

    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._inputs = iter(self._all[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        array = next(self._inputs, None)
        return None if array is None else {INPUT_NAME: np.ascontiguousarray(array, dtype=np.float32)}


def float_nodes(graph_path: str | os.PathLike, groups: Sequence[str]) -> list[str]:
    """Names of the nodes (with their following activations) the ``groups`` keep in float."""
    graph = onnx.load(str(graph_path), load_external_data=False).graph
    names: list[str] = []
    for group in groups:
        names += [name for name in _with_activations(graph, NODE_GROUPS[group](graph)) if name not in names]
    return names


def quantize(
    prepared: str | os.PathLike,
    path: str | os.PathLike,
    variant: Variant,
    calibration: Sequence[np.ndarray] = (),
) -> dict:
    """Write ``variant`` of the prepared graph to ``path``.

    Args:
        prepared: The output of :func:`prepare_for_quantization`.
        calibration: Served ``pixel_values`` arrays ``(1, 3, H, W)`` (static variants).

    Returns:
        ``{"float_nodes": n, "calibration_images": n}``.
    """
    excluded = float_nodes(prepared, variant.keep_float)
    if variant.mode == DYNAMIC:
        quantize_dynamic(
            str(prepared),
            str(path),
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            extra_options=variant.options(),
        )
        return {"float_nodes": len(excluded), "calibration_images": 0}
    images = list(calibration)[: variant.max_images]
    quantize_static(
        str(prepared),
        str(path),
        _Inputs(images),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType[variant.activation_type],
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod[variant.method],
        nodes_to_exclude=excluded,
        extra_options=variant.options(len(images)),
    )
    return {"float_nodes": len(excluded), "calibration_images": len(images)}
