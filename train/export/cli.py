"""``python -m train.export SRC OUT [--format safetensors|onnx] ...``: the flags, and nothing else.

    python -m train.export build/runs/steel-segformer models/steel-segformer --dtype float16
    python -m train.export default build/default-onnx --format onnx --eval_dir photos/
    python -m train.export default build/default-int8 --format onnx --quantize int8 \\
        --calibration_dir photos/calibration --eval_dir photos/held-out
    python -m train.export models/steel-anomaly build/steel-anomaly-onnx --format onnx   # its feature extractor
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from common.anomaly_files import is_anomaly_dir
from common.checkpoint_files import EXPORT_REPORT_FILE, ONNX_FILE
from common.checkpoints import ModelLoadError
from common.onnx_network import OnnxExportError
from common.training_progress import EXPORTING
from train import progress
from train.export.anomaly import export_anomaly_onnx
from train.export.checkpoint_copy import ExportError
from train.export.fp16 import DTYPES, export
from train.export.onnx_export import DEFAULT_CALIBRATION_IMAGES, Floors, OnnxOptions, export_onnx
from train.export.parity import LATENCY_RUNS
from train.export.quantize import QUANTIZE_MODES, VARIANTS

FORMATS = ("safetensors", "onnx")
PROG = "python -m train.export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Copy a trained checkpoint for shipping: its weights in float16 (--format safetensors), "
        "or with its network exported to ONNX and checked against eager (--format onnx).",
    )
    parser.add_argument("source", help="a checkpoint directory (save_pretrained output), or 'default'")
    parser.add_argument("destination", help="the checkpoint directory to write")
    parser.add_argument("--format", choices=FORMATS, default="safetensors", help="what to write (default: %(default)s)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="safetensors only: the weights' dtype (float16)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")
    onnx = parser.add_argument_group("--format onnx")
    onnx.add_argument("--quantize", choices=QUANTIZE_MODES, help="int8: static (calibrated); dynamic: int8 weights")
    onnx.add_argument("--calibration_dir", type=Path, help="images to calibrate int8 on (searched recursively)")
    onnx.add_argument(
        "--eval_dir",
        type=Path,
        help="held-out images to check the export on: a folder or imagefolder; for a segmenter a Kaggle "
        "train.csv + train_images/ folder (default: the calibration folder's images not calibrated on)",
    )
    onnx.add_argument(
        "--calibration_images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="calibration images used at most (default: %(default)s)",
    )
    onnx.add_argument(
        "--int8_variants",
        help=f"comma-separated variants to try (default: all of the mode); one of {', '.join(VARIANTS)}",
    )
    onnx.add_argument("--min_top1_agreement_fp32", type=float, default=Floors.top1_fp32, help="default %(default)s")
    onnx.add_argument(
        "--min_top1_agreement_int8",
        type=float,
        default=Floors.top1_int8,
        help="floor for --quantize (top-1, or per-class decisions of a multi-label model); default %(default)s",
    )
    onnx.add_argument(
        "--min_defect_pixel_agreement",
        type=float,
        default=Floors.defect_pixels,
        help="a segmenter's floor: share of eager's defect pixels kept; default %(default)s",
    )
    onnx.add_argument("--latency_runs", type=int, default=LATENCY_RUNS, help="timed runs of each (%(default)s)")
    return parser


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    onnx_only = {
        "--quantize": args.quantize,
        "--calibration_dir": args.calibration_dir,
        "--eval_dir": args.eval_dir,
        "--int8_variants": args.int8_variants,
    }
    if args.format == "safetensors":
        given = [flag for flag, value in onnx_only.items() if value is not None]
        if given:
            parser.error(f"{', '.join(given)} need --format onnx (the safetensors format only casts weights).")
    elif args.dtype is not None:
        parser.error("--dtype is for --format safetensors; the ONNX export is float32 or --quantize'd.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_flags(parser, args)
    if is_anomaly_dir(args.source) and (args.quantize or args.calibration_dir):
        parser.error(
            "--quantize and --calibration_dir are not available for an anomaly detector: its scores are distances "
            "between features, which int8 would move; export it in float32 (drop them)."
        )
    command = shlex.join([*PROG.split(), *(sys.argv[1:] if argv is None else argv)])
    progress.phase(EXPORTING)
    try:
        if args.format == "safetensors":
            dtype = args.dtype or "float16"
            result = export(Path(args.source), Path(args.destination), dtype, args.overwrite, command=command)
            print(
                f"wrote {args.destination}: {result['cast']} of {result['tensors']} tensors in {dtype}, "
                f"weights {result['bytes'] / 2**20:.1f} MiB"
            )
            return 0
        options = OnnxOptions(
            quantize=args.quantize,
            calibration_dir=args.calibration_dir,
            eval_dir=args.eval_dir,
            calibration_images=args.calibration_images,
            variants=[name for name in (args.int8_variants or "").split(",") if name] or None,
            latency_runs=args.latency_runs,
            floors=Floors(args.min_top1_agreement_fp32, args.min_top1_agreement_int8, args.min_defect_pixel_agreement),
        )
        if is_anomaly_dir(args.source):  # the feature extractor's graph; the memory bank stays as it is
            report = export_anomaly_onnx(
                args.source, args.destination, overwrite=args.overwrite, command=command,
                eval_dir=args.eval_dir, latency_runs=args.latency_runs,
            )  # fmt: skip
        else:
            report = export_onnx(args.source, args.destination, options, overwrite=args.overwrite, command=command)
    except (ExportError, ModelLoadError, OnnxExportError) as error:
        progress.fail(str(error))  # the Train tab's export job shows this sentence
        parser.exit(2, f"error: {error}\n")
    print(summary(args.destination, report))
    exported = {key: value for key, value in report["exported"].items() if isinstance(value, float)}
    progress.finish({**exported, "speedup": report["speedup"]}, args.destination)
    return 0


def summary(destination: str, report: dict) -> str:
    """One line per fact the user checks first."""
    exported = report["exported"]
    lines = [f"wrote {destination}: {report.get('onnx', {}).get('file', ONNX_FILE)} ({report['precision']})"]
    lines += [f"  {key}: {exported[key]:.4g}" for key in sorted(exported) if isinstance(exported[key], float)]
    lines.append(
        f"  latency batch 1: {report['latency_ms_onnx']:.1f} ms vs eager {report['latency_ms_eager']:.1f} ms "
        f"({report['speedup']:.2f}x); every figure in {EXPORT_REPORT_FILE}"
    )
    return "\n".join(lines)
