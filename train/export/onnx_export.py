"""``--format onnx``: a checkpoint directory that also holds ``model.onnx`` and the parity report that checked it.

The steps, each refusing with the figures rather than shipping something that answers
differently from the eager model:

1. load the checkpoint as served and pick the held-out images (``--eval_dir``, else the
   calibration folder's images calibration does not use);
2. export the float32 graph and measure it against eager; below the floor: refused;
3. with ``--quantize``, try each variant (``quantize.py``) on the pre-processed graph, measure
   every one, and keep the best that meets the floor; none does: refused, naming fp32 ONNX;
4. measure latency (eager and export interleaved) and write ``model.onnx``,
   ``export_report.json`` and the card's "Export" section into the staged copy, renamed into
   place only now.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnxruntime
import torch

from common.checkpoint_files import EXPORT_REPORT_FILE, MODEL_CARD_FILE, ONNX_FILE, WEIGHTS_FILE
from common.image_io import load_image
from common.onnx_network import INPUT_NAME, OUTPUT_NAME, OnnxNetwork, write_export_report
from train import report as card
from train.export import images as image_sets
from train.export import parity, quantize
from train.export.checkpoint_copy import (
    ExportError,
    ParityError,
    check_export_paths,
    copy_served_files,
    resolve_source,
    staged_directory,
)
from train.export.network import SEGMENTER, Network, export_fp32, load_network

DEFAULT_CALIBRATION_IMAGES = 100
CARD_HEADING = "Export"


@dataclass
class Floors:
    """The least agreement with eager an export must reach to be written (see ``parity.py``)."""

    top1_fp32: float = 1.0
    top1_int8: float = 0.99
    defect_pixels: float = 0.98

    def floor(self, network: Network, quantized: bool) -> float:
        if network.kind == SEGMENTER:
            return self.defect_pixels
        return self.top1_int8 if quantized else self.top1_fp32


@dataclass
class OnnxOptions:
    """What ``--format onnx`` was asked for (the CLI's flags, as plain values)."""

    quantize: str | None = None
    calibration_dir: Path | None = None
    eval_dir: Path | None = None
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    variants: list[str] | None = None
    latency_runs: int = parity.LATENCY_RUNS
    floors: Floors = None

    def __post_init__(self):
        self.floors = self.floors or Floors()
        if self.quantize is not None and self.quantize not in quantize.QUANTIZE_MODES:
            raise ExportError(f"--quantize {self.quantize}: choose one of {', '.join(quantize.QUANTIZE_MODES)}.")
        if self.quantize == quantize.STATIC and self.calibration_dir is None:
            raise ExportError(
                "--quantize int8 needs --calibration_dir, a folder of images like those served "
                "(it calibrates the activation ranges)."
            )
        if self.variants and self.quantize is None:
            raise ExportError("--int8_variants needs --quantize int8 or --quantize dynamic.")
        if self.calibration_images < 1:
            raise ExportError(f"--calibration_images {self.calibration_images}: give at least 1.")
        if self.quantize:
            try:  # before any work: a misspelt variant should not cost a calibration run
                quantize.variants_for(self.quantize, self.variants)
            except ValueError as error:
                raise ExportError(str(error)) from error


def held_out_and_calibration(network: Network, options: OnnxOptions) -> tuple[image_sets.HeldOut, list[Path]]:
    """The images the export is checked on, and the ones int8 is calibrated on.

    Raises:
        ExportError: neither ``--eval_dir`` nor a calibration folder with images left over, or
            a folder without images.
    """
    calibration: list[Path] = []
    leftover: list[Path] = []
    if options.calibration_dir is not None:
        files = _images_in(options.calibration_dir, "--calibration_dir")
        if options.quantize == quantize.STATIC:
            calibration, leftover = image_sets.split_calibration(
                files, options.calibration_images, hold_out=options.eval_dir is None
            )
        else:
            leftover = files  # nothing is calibrated on, so all of them are held out
    if options.eval_dir is not None:
        held_out = _eval_set(network, options.eval_dir)
    elif leftover:
        held_out = image_sets.HeldOut(
            leftover, f"{options.calibration_dir} (the {len(leftover)} images not used for calibration)"
        )
    else:
        raise ExportError(
            "No held-out images to check the export on: pass --eval_dir, a folder of images "
            "(an imagefolder for accuracy; a Kaggle train.csv + train_images/ folder for a segmenter)"
            + ("" if options.calibration_dir is None else f", since all of {options.calibration_dir} calibrates")
            + "."
        )
    if network.kind != SEGMENTER and held_out.labels is None:
        held_out.labels = image_sets.labels_from_folders(held_out.files, network.id2label)
    return held_out, calibration


def _images_in(folder: Path, flag: str) -> list[Path]:
    try:
        files = image_sets.image_files(folder)
    except FileNotFoundError as error:
        raise ExportError(f"{flag} {folder}: {error}.") from error
    if not files:
        raise ExportError(f"{flag} {folder} holds no images (searched recursively for .jpg, .png, ...).")
    return files


def _eval_set(network: Network, folder: Path) -> image_sets.HeldOut:
    if network.kind == SEGMENTER and image_sets.is_kaggle_folder(folder):
        return image_sets.kaggle_held_out(folder, num_classes=len(network.id2label) - 1)
    return image_sets.HeldOut(_images_in(folder, "--eval_dir"), str(folder))


class _Measured:
    """Held-out inputs and eager's answers on them, computed once for every candidate."""

    def __init__(self, network: Network, held_out: image_sets.HeldOut):
        pictures = held_out.images()
        self.network, self.held_out = network, held_out
        self.sizes = [(image.height, image.width) for image in pictures]
        self.inputs = network.pixel_values(pictures)
        self.eager = parity.eager_outputs(network, self.inputs)

    def figures(self, graph: Path) -> tuple[dict, OnnxNetwork]:
        exported = OnnxNetwork(graph)
        outputs = parity.run_all(exported, self.inputs)
        figures = parity.compare(
            self.network, self.eager, outputs, self.sizes, self.held_out.labels, self.held_out.masks
        )
        return figures, exported


def export_onnx(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    options: OnnxOptions,
    *,
    overwrite: bool = False,
    command: str = "",
) -> dict:
    """Write ``destination``: ``source``'s served files, its weights, ``model.onnx`` and the parity report.

    Returns:
        The report written to ``export_report.json``.

    Raises:
        ExportError: bad paths or flags, named with the fix.
        ParityError: the export (or every int8 variant) missed its floor; ``error.report`` has
            the figures and nothing was written.
        common.onnx_network.OnnxExportError: the exporter failed.
    """
    source, destination = resolve_source(source), Path(destination)
    check_export_paths(source, destination, overwrite)
    network = load_network(source)
    held_out, calibration_files = held_out_and_calibration(network, options)
    measured = _Measured(network, held_out)
    report = _report_head(network, source, held_out, options, command)
    with tempfile.TemporaryDirectory(prefix="export-onnx-") as work:
        work = Path(work)
        fp32_path = export_fp32(network, work / "fp32.onnx")
        figures, fp32_net = measured.figures(fp32_path)
        floor = options.floors.floor(network, quantized=False)
        report["fp32"] = {**figures, "floor": floor, "meets_floor": figures[parity.AGREEMENT] >= floor}
        if network.kind == SEGMENTER:
            report["fp32"]["tiles"] = parity.tile_parity(network, fp32_net, measured.inputs)
        if not report["fp32"]["meets_floor"]:
            raise ParityError(_refusal("The float32 ONNX export", figures, floor, network), report)
        chosen, chosen_net = fp32_path, fp32_net
        report["exported"] = dict(report["fp32"])
        if options.quantize:
            chosen, chosen_net = _quantize(network, measured, fp32_path, calibration_files, options, report, work)
        if network.kind == SEGMENTER and chosen != fp32_path:
            report["exported"]["tiles"] = parity.tile_parity(network, chosen_net, measured.inputs)
        report.update(parity.latency(network, chosen_net, measured.inputs[0], runs=options.latency_runs))
        report["onnx"] = _graph_facts(chosen, chosen_net)
        with staged_directory(destination, overwrite) as staging:
            copy_served_files(source, staging, weights=True)
            (staging / ONNX_FILE).write_bytes(chosen.read_bytes())
            write_export_report(staging, _json_safe(report))
            card_path = staging / MODEL_CARD_FILE
            card.set_card_section(card_path, CARD_HEADING, card_section(report, _earlier_export_note(card_path)))
    return report


def _quantize(
    network: Network,
    measured: _Measured,
    fp32_path: Path,
    calibration_files: list[Path],
    options: OnnxOptions,
    report: dict,
    work: Path,
) -> tuple[Path, OnnxNetwork]:
    """Try every variant; keep the fastest of those meeting the floor (report all of them)."""
    variants = quantize.variants_for(options.quantize, options.variants)
    prepared = quantize.prepare_for_quantization(fp32_path, work / "prepared.onnx")
    calibration = [x.numpy() for x in network.pixel_values([load_image(p) for p in calibration_files])]
    floor = options.floors.floor(network, quantized=True)
    tried = []
    for variant in variants:  # each measured like the final export, so their figures compare
        path = work / f"{variant.name}.onnx"
        facts = quantize.quantize(prepared, path, variant, calibration)
        figures, net = measured.figures(path)
        timing = parity.latency(network, net, measured.inputs[0], runs=max(options.latency_runs // 2, 3))
        speed = {key: timing[key] for key in ("latency_ms_eager", "latency_ms_onnx", "speedup")}
        tried.append(
            {
                "variant": variant.name,
                "settings": variant.settings(),
                **facts,
                **figures,
                **speed,
                "meets_floor": figures[parity.AGREEMENT] >= floor,
            }
        )
    report["quantization"]["variants"] = tried
    report["quantization"]["floor"] = floor
    passing = [entry for entry in tried if entry["meets_floor"]]
    if not passing:
        best = max(tried, key=lambda entry: entry[parity.AGREEMENT])
        message = _refusal(f"--quantize {options.quantize} (best variant: {best['variant']})", best, floor, network)
        message += (
            "\nEvery variant tried: "
            + "; ".join(
                f"{entry['variant']} {entry[parity.AGREEMENT]:.1%} ({entry['latency_ms_onnx']:.1f} ms)"
                for entry in tried
            )
            + f". The float32 ONNX export agrees {report['fp32'][parity.AGREEMENT]:.1%}: run without --quantize."
        )
        raise ParityError(message, report)
    # All of these answer as well as the floor demands; int8 is for speed, so the fastest wins.
    chosen = min(passing, key=lambda entry: entry["latency_ms_onnx"])
    report["quantization"]["chosen"] = chosen["variant"]
    report["quantization"]["settings"] = chosen["settings"]
    report["exported"] = {key: chosen[key] for key in chosen if key not in speed and key not in ("settings", "variant")}
    path = work / f"{chosen['variant']}.onnx"
    return path, OnnxNetwork(path)


def _json_safe(value):
    """``value`` with NaN and infinities as null: strict JSON has neither (a Dice without defects is NaN)."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _refusal(what: str, figures: dict, floor: float, network: Network) -> str:
    measure = {SEGMENTER: "defect-pixel agreement"}.get(network.kind, "agreement with eager")
    detail = ", ".join(
        f"{key} {value:.4g}"
        for key, value in figures.items()
        if isinstance(value, float) and key != parity.AGREEMENT and "latency" not in key and key != "speedup"
    )
    return (
        f"{what} is refused: {measure} {figures[parity.AGREEMENT]:.2%} is below the floor {floor:.2%} "
        f"({detail}). Nothing was written."
    )


def _report_head(network: Network, source: Path, held_out: image_sets.HeldOut, options: OnnxOptions, command: str):
    few = len(held_out.files) < image_sets.MIN_HELD_OUT * 5
    cpu = parity.cpu_info()
    quantization = None
    if options.quantize:
        quantization = {
            "mode": options.quantize,
            "calibration_dir": None if options.calibration_dir is None else str(options.calibration_dir),
            "calibration_images_wanted": options.calibration_images,
        }
    return {
        "command": command,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": str(source),
        "format": "onnx",
        "precision": {None: "float32", quantize.STATIC: "int8", quantize.DYNAMIC: "int8 weights"}[options.quantize],
        "quantization": quantization,
        "dynamic_axes": "batch, height, width" if network.dynamic_size else "batch",
        "exporter": f"torch.onnx (dynamo), torch {torch.__version__}",
        "onnxruntime": onnxruntime.__version__,
        "model": {
            "type": network.model.config.model_type,
            "class": type(network.model).__name__,
            "kind": network.kind,
            "labels": len(network.id2label),
            "input_size": None if network.input_size is None else list(network.input_size),
        },
        "held_out": {
            "source": held_out.source,
            "images": len(held_out.files),
            "labelled": held_out.labels is not None or held_out.masks is not None,
            "note": f"few images: one disagreement moves agreement by {1 / max(len(held_out.files), 1):.1%}"
            if few
            else "",
        },
        "floors": {
            "min_top1_agreement_fp32": options.floors.top1_fp32,
            "min_top1_agreement_int8": options.floors.top1_int8,
            "min_defect_pixel_agreement": options.floors.defect_pixels,
        },
        "cpu": cpu["model"],
        "cpu_flags": cpu["flags"],
    }


def _graph_facts(path: Path, net: OnnxNetwork) -> dict:
    return {
        "file": ONNX_FILE,
        "bytes": path.stat().st_size,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "input_shape": ["batch" if d is None else d for d in net.input_shape],
    }


def _earlier_export_note(card_path: Path) -> str | None:
    """The card's "Export" section from before, unless an ONNX export wrote it (it is replaced).

    A checkpoint shipped with float16 weights says so there, with the command that cast them;
    the ONNX export keeps those weights, so it keeps that note too.
    """
    if not card_path.is_file():
        return None
    match = re.search(rf"^## {CARD_HEADING}\n(.*?)(?=^## |\Z)", card_path.read_text(encoding="utf-8"), re.M | re.S)
    if not match or EXPORT_REPORT_FILE in match.group(1):
        return None
    return match.group(1).strip() or None


def card_section(report: dict, earlier_note: str | None = None) -> str:
    """The model card's "Export" section: what ``model.onnx`` is and how it compares with eager."""
    exported = report["exported"]
    quantization = report["quantization"]
    what = report["precision"] if not quantization else f"{report['precision']}, variant {quantization['chosen']}"
    rows = [
        ("format", f"ONNX, {what}; `{ONNX_FILE}` beside the eager `{WEIGHTS_FILE}` (Grad-CAM uses those)"),
        ("held-out images", f"{report['held_out']['images']} from {report['held_out']['source']}"),
    ]
    for key, label in (
        ("top1_agreement", "top-1 agreement with eager"),
        ("decision_agreement", "same per-class decisions as eager"),
        ("defect_pixel_agreement", "defect-pixel agreement with eager"),
        ("max_abs_logit_diff", "max abs logit difference"),
        ("accuracy_change", "accuracy change"),
    ):
        if key in exported:
            value = exported[key]
            rows.append((label, f"{value:.2%}" if "agreement" in key or "accuracy" in key else f"{value:.3g}"))
    rows.append(
        (
            "latency, batch 1",
            f"{report['latency_ms_onnx']:.1f} ms vs eager {report['latency_ms_eager']:.1f} ms "
            f"({report['speedup']:.2f}x), {report['threads']} threads",
        )
    )
    flags = ", ".join(flag for flag, present in report["cpu_flags"].items() if present) or "none of " + ", ".join(
        report["cpu_flags"]
    )
    rows.append(("CPU", f"{report['cpu']} ({flags})"))
    table = "\n".join(["| | |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])
    text = (
        f"The network is also exported to ONNX for ONNX Runtime; preprocessing and post-processing are "
        f"unchanged (the processor and calibration here). Checked against the eager model:\n\n{table}\n\n"
        f"All figures are in `{EXPORT_REPORT_FILE}`. Made with:\n\n```bash\n{report['command']}\n```"
    )
    return f"{earlier_note}\n\n{text}" if earlier_note else text
