"""``--format onnx`` for an anomaly detector: its folder plus ``anomaly_features.onnx``, checked on scores.

1. load the detector as served (anomaly.json, memory banks, backbone) and pick the check
   images: ``eval_dir``, else the validation images training scored (``validation_scores.csv``),
   else seeded generated inputs (the held-out good images' scores are recorded, not their files);
2. export the feature extractor (``common.anomaly_onnx``) and score the check images with its
   features and with eager's, against every product's bank: refused unless they agree;
3. time both at batch 1 and write the detector's files, the graph and ``export_report.json``
   into a staged copy, renamed into place only now (``checkpoint_copy.staged_directory``).
"""

from __future__ import annotations

import csv
import datetime
import os
import shutil
import tempfile
from pathlib import Path

import onnxruntime
import torch

from common.anomaly_features import LayerError, pixel_values
from common.anomaly_files import (
    AnomalyConfig,
    AnomalyModelError,
    is_anomaly_dir,
    load_anomaly_config,
    load_memory_banks,
)
from common.anomaly_onnx import (
    MAX_ABS_SCORE_DIFF,
    OnnxPatchFeatureExtractor,
    export_feature_extractor,
    feature_parity,
    load_eager_extractor,
    parity_failure,
)
from common.checkpoint_files import (
    ANOMALY_FILE,
    ANOMALY_ONNX_FILE,
    MEMORY_BANK_FILE,
    SHIPPED_FILE_MODE,
    VALIDATION_SCORES_FILE,
)
from common.image_io import ImageLoadError, load_image
from common.onnx_network import LATENCY_ROUNDS, latency_in_turns, write_export_report
from train.export import images as image_sets
from train.export.checkpoint_copy import (
    ExportError,
    ParityError,
    check_export_paths,
    copy_served_files,
    staged_directory,
)

# Check images at most: enough to see a verdict change, few enough to score in seconds.
MAX_CHECK_IMAGES = 32
# Seeded inputs when the detector recorded no images: noise at the input size, in normalised units.
GENERATED_INPUTS = 8


def export_anomaly_onnx(
    source_dir: str | os.PathLike,
    destination_dir: str | os.PathLike,
    overwrite: bool = False,
    command: str = "",
    *,
    eval_dir: str | os.PathLike | None = None,
    latency_runs: int = LATENCY_ROUNDS,
) -> dict:
    """Write ``destination_dir``: the detector in ``source_dir``, its ONNX feature extractor and the report.

    Args:
        eval_dir: Images to check the export on (searched recursively); see the module docstring.
        latency_runs: Interleaved eager/ONNX rounds timed at batch 1.

    Returns:
        The report written to ``export_report.json``.

    Raises:
        ExportError: not a detector, or bad paths, named with the fix.
        ParityError: the graph does not score like eager; nothing was written.
        common.onnx_network.OnnxExportError: the exporter failed.
        common.checkpoints.ModelLoadError: the backbone cannot be loaded.
    """
    source, destination = Path(source_dir), Path(destination_dir)
    config, banks = _load_detector(source, destination, overwrite)
    try:
        eager = load_eager_extractor(source, config)
    except (AnomalyModelError, LayerError) as error:
        raise ExportError(f"Cannot load the detector {source}: {error}") from error
    inputs, described = check_inputs(source, config, eval_dir)
    with tempfile.TemporaryDirectory(prefix="export-anomaly-") as work:
        graph = export_feature_extractor(eager, config.input_size, Path(work) / ANOMALY_ONNX_FILE)
        figures, exported = check_feature_graph(eager, graph, inputs, config, banks)
        report = _report(source, config, command, figures, described)
        report.update(
            latency_in_turns(lambda: eager(inputs[:1]), lambda: exported(inputs[:1]), inputs[:1], latency_runs)
        )
        report["onnx"] = {"file": ANOMALY_ONNX_FILE, "bytes": graph.stat().st_size, "input_shape": _shape(exported)}
        with staged_directory(destination, overwrite) as staging:
            copy_served_files(source, staging, weights=True)  # the backbone's, when the detector carries one
            for path in (source / MEMORY_BANK_FILE, graph):
                shutil.copyfile(path, staging / path.name)
                (staging / path.name).chmod(SHIPPED_FILE_MODE)
            write_export_report(staging, report)
    return report


def _load_detector(source: Path, destination: Path, overwrite: bool) -> tuple[AnomalyConfig, dict]:
    if not is_anomaly_dir(source):
        raise ExportError(
            f"{source} has no {ANOMALY_FILE}, so it is not an anomaly detector; give the folder written by "
            "python -m train.anomaly_detection."
        )
    # A detector on the embedded default backbone carries no model.safetensors (common.anomaly_files).
    check_export_paths(source, destination, overwrite, weights=False)
    try:
        config = load_anomaly_config(source)
        return config, load_memory_banks(source, config)
    except AnomalyModelError as error:
        raise ExportError(str(error)) from error


def check_inputs(
    source: Path, config: AnomalyConfig, eval_dir: str | os.PathLike | None = None
) -> tuple[torch.Tensor, str]:
    """The ``(N, 3, H, W)`` pixel values the export is checked on, and where they came from.

    Raises:
        ExportError: ``eval_dir`` is missing, holds no images, or holds one that cannot be read.
    """
    if eval_dir is not None:
        try:
            files = image_sets.image_files(Path(eval_dir))[:MAX_CHECK_IMAGES]
        except FileNotFoundError as error:
            raise ExportError(f"--eval_dir {eval_dir}: {error}.") from error
        if not files:
            raise ExportError(f"--eval_dir {eval_dir} holds no images (searched recursively for .jpg, .png, ...).")
        described = f"{eval_dir} ({len(files)} images)"
    else:
        files = validation_images(source)[:MAX_CHECK_IMAGES]
        described = f"the validation images in {VALIDATION_SCORES_FILE} ({len(files)})"
    if not files:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(GENERATED_INPUTS, 3, *config.input_size, generator=generator)
        return inputs, f"{GENERATED_INPUTS} seeded random inputs (no images recorded; pass --eval_dir for real ones)"
    try:
        images = [load_image(path) for path in files]
    except ImageLoadError as error:
        raise ExportError(f"Cannot check the export on {described}: {error}") from error
    return pixel_values(images, config.input_size, config.mean, config.std), described


def validation_images(source: Path) -> list[Path]:
    """The images training scored for its validation report that still exist (good and defective)."""
    table = source / VALIDATION_SCORES_FILE
    if not table.is_file():
        return []
    with table.open(newline="") as handle:
        paths = [Path(row["path"]) for row in csv.DictReader(handle) if row.get("path")]
    return [path for path in paths if path.is_file()]


def check_feature_graph(
    eager, graph: Path, inputs: torch.Tensor, config: AnomalyConfig, banks: dict[str, torch.Tensor]
) -> tuple[dict, OnnxPatchFeatureExtractor]:
    """Score ``inputs`` with eager's features and with ``graph``'s; refuse a graph that scores otherwise.

    Returns:
        The parity figures (``common.anomaly_onnx.feature_parity``) and the loaded graph.

    Raises:
        ParityError: the scores, maps or verdicts differ (or the embedding's shape does); the
            message says by how much, and ``error.report`` has the figures.
    """
    exported = OnnxPatchFeatureExtractor(graph)
    try:
        figures = feature_parity(eager(inputs), exported(inputs), config, banks)
    except ValueError as error:  # another shape: a graph of another backbone or layers
        raise ParityError(f"The ONNX feature extractor is refused: {error}. Nothing was written.", {}) from error
    figures = {key: round(value, 8) if isinstance(value, float) else value for key, value in figures.items()}
    failure = parity_failure(figures)
    if failure:
        raise ParityError(
            f"The ONNX feature extractor is refused: {failure}. Nothing was written; export again, and if it "
            "persists serve the detector with PyTorch (runtime 'torch').",
            {"exported": figures},
        )
    return figures, exported


def _shape(exported: OnnxPatchFeatureExtractor) -> list:
    return ["batch" if size is None else size for size in exported.network.input_shape]


def _report(source: Path, config: AnomalyConfig, command: str, figures: dict, described: str) -> dict:
    return {
        "command": command,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": str(source),
        "format": "onnx",
        "precision": "float32",
        "quantization": None,
        "dynamic_axes": "batch",
        "exporter": f"torch.onnx (TorchScript), torch {torch.__version__}",
        "onnxruntime": onnxruntime.__version__,
        "model": {"kind": "anomaly detector", "backbone": config.backbone, "layers": list(config.layers)},
        "input_size": list(config.input_size),
        "check_images": described,
        "tolerance": {"max_abs_score_diff": MAX_ABS_SCORE_DIFF, "verdict_agreement": 1.0},
        "exported": figures,
    }
