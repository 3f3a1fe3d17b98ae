"""The parity report: how an exported graph answers against the eager model on held-out images.

Classifiers are compared on what the pipeline serves from the logits: the top-1 class of a
single-label model, the per-class decisions at its thresholds of a multi-label one (the stage
1), and the accuracy of both where the held-out images have labels. A segmenter is compared
on its served label maps (upsampled to the image, minimum areas applied): the share of
defect pixels both paint the same class, counted against the larger of the two defect areas
so that painting extra defects counts as much as losing some, and Dice of both where masks
exist. It is checked at each image's own size and on the tiles the pipeline's ``tile_width``
cuts, since the graph's height and width are dynamic.

Latency is measured at batch 1, eager (``torch.inference_mode``, as served) and exported
interleaved in one process (``common.onnx_network.measure_latency``), so both see the same
machine load; medians of both and their ratio are reported with the CPU model and the
instruction-set flags that decide int8 speed and saturation (``avx512_vnni``/``amx``: without
VNNI, ORT's u8s8 kernels can saturate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from common.onnx_network import OnnxNetwork, cpu_name, logit_parity, measure_latency, read_cpu_flags
from common.segmentation_input import restore_size, round_up, tile_starts, upsample
from common.segmentation_rules import drop_classes, stored_min_areas
from common.segmentation_scores import segmentation_metrics
from train.export.network import MULTI_LABEL, SEGMENTER, Network

BATCH = 16
# Same-sized inputs run together up to this many pixels per call (16 classifier inputs of
# 224 x 224; a 256 x 1600 steel strip runs alone), so a segmenter's memory stays bounded.
PIXELS_PER_CALL = BATCH * 224 * 224
LATENCY_RUNS = 20
# The tile width the parity check cuts wide images into (the demo segmenter's --tile_width).
TILE_WIDTH = 512
TILE_OVERLAP = 64
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")
AGREEMENT = "agreement"
# Top-1 and top-2 logits closer than this count as a near tie in the report.
NEAR_TIE = 0.1


def cpu_info() -> dict:
    """The CPU model and the instruction-set flags that matter for int8 (``/proc/cpuinfo`` on Linux)."""
    flags = read_cpu_flags()  # None: not Linux, the flags are unknown, not absent
    return {
        "model": cpu_name(),
        "flags": {flag: None if flags is None else flag in flags for flag in CPU_FLAGS},
    }


def _eager(network: Network) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return network.model(pixel_values=pixel_values).logits

    return forward


def run_all(forward: Callable[[torch.Tensor], torch.Tensor], inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """``forward`` on every ``(1, 3, H, W)`` input; same-sized ones together (``PIXELS_PER_CALL``)."""
    outputs: list[np.ndarray] = []
    i = 0
    while i < len(inputs):
        j = i + 1
        most = max(1, PIXELS_PER_CALL // (inputs[i].shape[-2] * inputs[i].shape[-1]))
        while j < len(inputs) and j - i < most and inputs[j].shape == inputs[i].shape:
            j += 1
        logits = forward(torch.cat(list(inputs[i:j]))).float().numpy()
        outputs += list(logits[:, None])
        i = j
    return outputs


def eager_outputs(network: Network, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return run_all(_eager(network), inputs)


def compare(
    network: Network,
    eager: Sequence[np.ndarray],
    exported: Sequence[np.ndarray],
    sizes: Sequence[tuple[int, int]],
    labels: Sequence[int] | None = None,
    masks: Sequence[np.ndarray] | None = None,
) -> dict:
    """Parity figures of one export; ``"agreement"`` is the one the floor is checked on.

    Args:
        eager, exported: Per image, the logits ``(1, C)`` or ``(1, C, h, w)`` of each.
        sizes: Per image, its ``(height, width)`` (a segmenter's label maps are at this size).
        labels: A classifier's true class per image, or None.
        masks: A segmenter's true class-index map per image, or None.
    """
    if network.kind == SEGMENTER:
        return segmenter_parity(network, eager, exported, sizes, masks)
    eager_logits, exported_logits = np.concatenate(eager), np.concatenate(exported)
    if network.kind == MULTI_LABEL:
        return multi_label_parity(eager_logits, exported_logits, network.thresholds)
    figures = logit_parity(eager_logits, exported_logits)
    figures[AGREEMENT] = figures["top1_agreement"]
    top2 = np.sort(eager_logits, axis=-1)[:, -2:] if eager_logits.shape[-1] > 1 else None
    if top2 is not None:
        # Images whose top two classes eager itself barely tells apart: any export may swap them.
        clear = top2[:, 1] - top2[:, 0] >= NEAR_TIE
        figures["near_ties"] = int((~clear).sum())
        same = eager_logits.argmax(-1) == exported_logits.argmax(-1)
        figures["top1_agreement_without_near_ties"] = float(same[clear].mean()) if clear.any() else 1.0
    if labels is not None:
        truth = np.asarray(labels)
        figures["accuracy_eager"] = float((eager_logits.argmax(-1) == truth).mean())
        figures["accuracy_exported"] = float((exported_logits.argmax(-1) == truth).mean())
        figures["accuracy_change"] = figures["accuracy_exported"] - figures["accuracy_eager"]
    return figures


def multi_label_parity(eager: np.ndarray, exported: np.ndarray, thresholds: Sequence[float]) -> dict:
    """Same per-class decisions (sigmoid >= threshold, as the stage 1 is served) on each image."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    decide = lambda logits: 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64))) >= thresholds  # noqa: E731
    same = decide(eager) == decide(exported)
    return {
        "max_abs_logit_diff": float(np.abs(np.asarray(eager, np.float64) - exported).max()),
        "decision_agreement": float(same.all(axis=1).mean()),
        "per_class_decision_agreement": float(same.mean()),
        "thresholds": [float(t) for t in thresholds],
        AGREEMENT: float(same.all(axis=1).mean()),
    }


def label_map(network: Network, logits: np.ndarray, size: tuple[int, int], min_areas: list[int]) -> np.ndarray:
    """A segmenter's served ``(H, W)`` label map from its logits, as the pipeline makes it.

    The logits of the padded input are upsampled bilinearly to the padded size, the padding
    cropped, a fixed-resize model's map resized back to the image, and classes below their
    minimum area (the segmenter-alone set in the config) cleared.
    """
    model_size = network.input_size or size
    padded = [round_up(side) for side in model_size]
    upsampled = restore_size(upsample(torch.from_numpy(logits), padded)[0], model_size, size)[None]
    labels = upsampled[0].argmax(0).numpy().astype(np.uint8)
    return drop_classes(labels, min_areas)


def served_min_areas(network: Network) -> list[int]:
    """Minimum pixels per defect class 1..C-1 that the segmenter alone is served with."""
    areas, _ = stored_min_areas(network.model.config, with_stage1=False)
    return [int(areas.get(network.id2label[c], 0)) for c in range(1, len(network.id2label))]


def segmenter_parity(
    network: Network,
    eager: Sequence[np.ndarray],
    exported: Sequence[np.ndarray],
    sizes: Sequence[tuple[int, int]],
    masks: Sequence[np.ndarray] | None = None,
) -> dict:
    """Defect-pixel agreement of the served label maps (and Dice of both when masks exist)."""
    min_areas = served_min_areas(network)
    eager_maps = [label_map(network, e, s, min_areas) for e, s in zip(eager, sizes)]
    exported_maps = [label_map(network, x, s, min_areas) for x, s in zip(exported, sizes)]
    eager_defect = sum(int((m > 0).sum()) for m in eager_maps)
    exported_defect = sum(int((m > 0).sum()) for m in exported_maps)
    same_defect = sum(int(((e > 0) & (e == x)).sum()) for e, x in zip(eager_maps, exported_maps))
    larger = max(eager_defect, exported_defect)
    figures = {
        "max_abs_logit_diff": max(float(np.abs(e.astype(np.float64) - x).max()) for e, x in zip(eager, exported)),
        "eager_defect_pixels": eager_defect,
        "exported_defect_pixels": exported_defect,
        "same_class_defect_pixels": same_defect,
        "defect_pixel_agreement": same_defect / larger if larger else 1.0,
        "pixel_agreement": float(
            sum(int((e == x).sum()) for e, x in zip(eager_maps, exported_maps)) / sum(m.size for m in eager_maps)
        ),
        "defective_image_agreement": float(
            np.mean([bool((e > 0).any()) == bool((x > 0).any()) for e, x in zip(eager_maps, exported_maps)])
        ),
        "min_areas": min_areas,
    }
    figures[AGREEMENT] = figures["defect_pixel_agreement"]
    if masks is not None:
        id2label = network.id2label
        same_size = all(m.shape == e.shape for m, e in zip(masks, eager_maps))
        if same_size:
            figures["dice_eager"] = segmentation_metrics(np.stack(eager_maps), np.stack(masks), id2label)
            figures["dice_exported"] = segmentation_metrics(np.stack(exported_maps), np.stack(masks), id2label)
    return figures


def tiles(pixel_values: torch.Tensor, width: int = TILE_WIDTH, overlap: int = TILE_OVERLAP) -> torch.Tensor:
    """The ``width``-wide tiles the pipeline cuts a padded input into (last one aligned to the end)."""
    width, starts = tile_starts(pixel_values.shape[-1], width, overlap)
    return torch.cat([pixel_values[..., x : x + width] for x in starts])


def tile_parity(network: Network, exported: OnnxNetwork, inputs: Sequence[torch.Tensor]) -> dict:
    """Logit difference and argmax agreement of a segmenter on ``TILE_WIDTH`` tiles (a tiled pipeline)."""
    cut = [tiles(x) for x in inputs]
    cut = [tile[None] for batch in cut for tile in batch]
    eager = run_all(_eager(network), cut)
    onnx = run_all(exported, cut)
    return {
        "tile_size": [int(cut[0].shape[-2]), int(cut[0].shape[-1])] if cut else None,
        "tiles": len(cut),
        "max_abs_logit_diff": max(float(np.abs(e.astype(np.float64) - x).max()) for e, x in zip(eager, onnx)),
        "argmax_agreement": float(np.mean([(e.argmax(1) == x.argmax(1)).mean() for e, x in zip(eager, onnx)])),
    }


def latency(network: Network, exported: OnnxNetwork, pixel_values: torch.Tensor, runs: int = LATENCY_RUNS) -> dict:
    """Median ms at batch 1 of eager and the export, timed in turns in this process (``measure_latency``)."""
    return measure_latency(network.model, exported, pixel_values[:1], runs)
