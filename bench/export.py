"""ONNX export: eager PyTorch vs ONNX Runtime float32 vs int8, measured in one process.

    python -m bench.export [--rounds 20] [--segment-rounds 8] [--n-heldout 500] [--n-strips 20]
                           [--skip-int8] [--re-export] [--out bench/results/export.json]

Exports (``python -m train.export``, run as subprocesses into ``bench/results/export/``; an
export whose recorded command is the one asked for is reused) and then measures, with torch
and ONNX Runtime each on ``--threads`` threads:

1. the default classifier at batch 1: the raw forward of each runtime, top-1 agreement with
   eager and the largest logit difference on ``--n-heldout`` held-out images (scikit-image's
   photos plus generated parts and scenes none of the calibration images come from), and the
   file sizes. int8 is exported with ``--min_top1_agreement_int8 0`` so that the export writes
   its figures even when its floor would refuse it; the goal below still judges them;
2. the demo pair (``models/steel-segformer`` + ``models/steel-stage1``): the raw forward of one
   256x512 tile, ``segment()`` of one 256x1600 strip end to end, and on ``--n-strips`` held-out
   strips (seed 1; calibration on seed 2) the served defect-pixel agreement with eager and the
   Dice of each. The int8 pair is the int8 segmenter with the float32 stage 1 (stage 1 is a
   small share of a strip's time and is not quantised);
3. pipeline overhead: ``classify()`` of one image and ``segment()`` of one strip against the
   network calls they make (the classifier forward; stage 1 plus every tile), per runtime.

Timings are interleaved round by round (``bench.common.time_round_robin``), so load from other
processes falls on every variant alike and the ratios stay comparable. A missed goal is
reported with its figures, not raised: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

from bench.common import (
    RESULTS,
    benchmark_photo_path,
    check_at_least,
    latency_stats,
    log_tail,
    machine_info,
    publish_report,
    time_round_robin,
)
from common.checkpoint_files import ONNX_FILE, WEIGHTS_FILE
from common.onnx_network import logit_parity, read_export_report
from common.segmentation_scores import segmentation_metrics
from datagen.parts import GENERATOR_VERSION as PARTS_GENERATOR_VERSION
from datagen.parts import OTHER_KINDS, PART_KINDS, draw_other, draw_part
from datagen.steel import CSV_NAME, SteelImage, held_out_steel, write_steel
from pipelines.examples import skimage_data_dir
from pipelines.registry import PROJECT_MODELS_DIR

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = RESULTS / "export.json"
DATA = RESULTS / "data"
EXPORTS = RESULTS / "export"
EXPORT_COMMAND = ("python", "-m", "train.export")

EAGER, FP32, INT8 = "eager", "onnx_fp32", "onnx_int8"
RUNTIMES = (EAGER, FP32, INT8)

# The held-out images of the default model. At least 500, so that 99% agreement is resolved to
# five images; scikit-image's photos first, then generated parts and non-part scenes drawn with
# a seed that train.export.sample_sets (calibration: seed 0, its own held-out: seed 1) never uses.
MIN_HELD_OUT = 500
HELD_OUT_SEED = 2
HELD_OUT_STREAM = 3_000_003
HELD_OUT_SIZE = 192  # the size train.export.sample_sets draws parts at
MIN_PHOTO_SIDE = 64
HELD_OUT_MANIFEST = "held_out.json"
SAMPLE_SETS = DATA / "export-images"  # written by `python -m train.export.sample_sets`
CALIBRATION = SAMPLE_SETS / "calibration"

# The demo pair's strips, as in README's export section: held out on seed 1, calibrated on seed 2.
STEEL_HELD_OUT_SEED = 1
STEEL_CALIBRATION_SEED = 2
STEEL_CALIBRATION_N = 40
SEGMENTER = PROJECT_MODELS_DIR / "steel-segformer"
STAGE1 = PROJECT_MODELS_DIR / "steel-stage1"
TILE_WIDTH = 512
# What passed the 98% defect-pixel floor before (README); for the default model no variant
# reaches 99%, and these two are the all-int8 graph and the most accurate one.
INT8_VARIANTS = "minmax,minmax_float_depthwise"
EXPORT_LATENCY_RUNS = 5  # the export's own timing; this benchmark times everything itself
# Calibration images of the int8 exports (the export's own default): every one of them calibrates
# (train.export.quantize measures them in chunks and merges the ranges).
INT8_CALIBRATION_IMAGES = 100
# Export folder names under EXPORTS, per model and runtime.
EXPORT_NAMES = {
    "default": {FP32: "default-fp32", INT8: "default-int8"},
    "steel-segformer": {FP32: "steel-segformer-fp32", INT8: "steel-segformer-int8"},
    "steel-stage1": {FP32: "steel-stage1-fp32"},
}

# The goals.
MIN_FP32_SPEEDUP_CLASSIFIER = 2.0
MIN_INT8_OVER_FP32_CLASSIFIER = 1.3
MIN_TOP1_FP32 = 1.0
MIN_TOP1_INT8 = 0.99
MIN_FP32_SPEEDUP_SEGMENTER = 1.5
MIN_INT8_SPEEDUP_SEGMENTER = 2.5
MIN_DEFECT_PIXELS_INT8 = 0.98
MAX_DICE_CHANGE_INT8 = 0.01
MAX_PIPELINE_OVER_FORWARD = 1.3
_MEBIBYTE = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Data: held-out and calibration sets, written once under bench/results/data and reused.
# ---------------------------------------------------------------------------------------------


def photo_files(folder: Path | None, min_side: int = MIN_PHOTO_SIDE) -> list[Path]:
    """The PNG and JPEG photos in ``folder`` (not recursive) whose shorter side is at least ``min_side``."""
    if folder is None or not folder.is_dir():
        return []
    photos = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in {".png", ".jpg", ".jpeg"}:
            with Image.open(path) as image:
                if min(image.size) >= min_side:
                    photos.append(path)
    return photos


def generated_kind(index: int) -> str:
    """The part or non-part kind of the ``index``-th generated held-out image (all kinds in turn)."""
    kinds = PART_KINDS + OTHER_KINDS
    return kinds[index % len(kinds)]


def write_held_out_images(
    folder: str | Path,
    n: int,
    seed: int = HELD_OUT_SEED,
    photos_dir: Path | None = None,
    size: int = HELD_OUT_SIZE,
    progress: bool = False,
) -> dict:
    """Write ``n`` held-out images to ``folder`` (photos first, then generated), or reuse them.

    The folder's manifest records what was asked for and every file name; when it matches and
    every file is there, nothing is drawn again. Otherwise the folder's images are deleted and
    the set is written afresh, so a changed ``n`` never leaves stale images behind.

    Args:
        folder: Where the images go (flat: ``--eval_dir`` takes it as it is).
        n: Images in all, at least 1.
        seed: Seed of the generated images; each is drawn from its own ``[seed, stream, index]``.
        photos_dir: Real photos to start with; by default scikit-image's bundled ones.
        size: Side of the generated square images.
        progress: Show a tqdm bar while drawing.

    Returns:
        The manifest: ``n``, ``seed``, ``size``, ``photos``, ``generated``, ``files``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1 held-out image, got {n}")
    folder = Path(folder)
    photos = photo_files(skimage_data_dir() if photos_dir is None else photos_dir)[:n]
    wanted = {
        "n": n,
        "seed": seed,
        "size": size,
        "photos_from": [path.name for path in photos],
        "parts_generator_version": PARTS_GENERATOR_VERSION,
    }
    manifest_path = folder / HELD_OUT_MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if {key: manifest.get(key) for key in wanted} == wanted and all(
            (folder / name).is_file() for name in manifest["files"]
        ):
            return manifest
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    for stale in folder.glob("*.png"):
        stale.unlink()
    files = []
    for path in photos:
        with Image.open(path) as image:
            name = f"photo_{path.stem}.png"
            image.convert("RGB").save(folder / name)
        files.append(name)
    indices = range(n - len(photos))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="held-out images", unit="image")
    for index in indices:
        kind = generated_kind(index)
        rng = np.random.default_rng([seed, HELD_OUT_STREAM, index])
        image = draw_part(kind, rng, size)[0] if kind in PART_KINDS else draw_other(kind, rng, size)
        name = f"generated_{index:04d}_{kind}.png"
        image.save(folder / name, format="PNG", compress_level=1)
        files.append(name)
    manifest = {**wanted, "photos": len(photos), "generated": n - len(photos), "files": files}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def held_out_folder(n: int, seed: int = HELD_OUT_SEED) -> Path:
    return DATA / f"export-heldout-seed{seed}-n{n}"


def ensure_calibration_images(log_dir: Path) -> Path:
    """``train.export.sample_sets``'s calibration folder (244 generated images, seed 0), written once."""
    if not (CALIBRATION.is_dir() and any(CALIBRATION.glob("*.png"))):
        run_logged([sys.executable, "-m", "train.export.sample_sets", str(SAMPLE_SETS)], log_dir / "sample_sets.log")
    return CALIBRATION


def steel_calibration_folder(n: int = STEEL_CALIBRATION_N, seed: int = STEEL_CALIBRATION_SEED) -> Path:
    """Strips to calibrate the segmenter's int8 on, written once (seed 2: neither training nor held out)."""
    folder = DATA / f"steel-calibration-seed{seed}-n{n}"
    if not (folder / CSV_NAME).is_file():
        write_steel(folder, n=n, seed=seed)
    return folder


# ---------------------------------------------------------------------------------------------
# Exports: `python -m train.export` as subprocesses (the benchmark may not import train/).
# ---------------------------------------------------------------------------------------------


class ExportFailedError(RuntimeError):
    """``python -m train.export`` exited with an error; the message has the end of its log."""


@dataclass(frozen=True)
class ExportJob:
    """One ``python -m train.export`` run: a name, the source, its flags; it writes ``EXPORTS/name``."""

    name: str
    source: str
    flags: tuple[str, ...]

    @property
    def destination(self) -> Path:
        return EXPORTS / self.name

    def arguments(self) -> list[str]:
        return [self.source, str(self.destination), "--format", "onnx", *self.flags, "--overwrite"]

    def command(self) -> str:
        """The command as the export records it in ``export_report.json``."""
        return shlex.join([*EXPORT_COMMAND, *self.arguments()])


def export_jobs(
    held_out: Path, calibration: Path, steel_held_out: Path, steel_calibration: Path, with_int8: bool
) -> list[ExportJob]:
    """The exports this benchmark measures, in the order they are made."""
    runs = ("--latency_runs", str(EXPORT_LATENCY_RUNS))
    jobs = [
        ExportJob(EXPORT_NAMES["default"][FP32], "default", ("--eval_dir", str(held_out), *runs)),
        ExportJob(EXPORT_NAMES["steel-stage1"][FP32], str(STAGE1), ("--eval_dir", str(steel_held_out), *runs)),
        ExportJob(EXPORT_NAMES["steel-segformer"][FP32], str(SEGMENTER), ("--eval_dir", str(steel_held_out), *runs)),
    ]
    if with_int8:
        int8 = (
            "--quantize",
            "int8",
            "--int8_variants",
            INT8_VARIANTS,
            "--calibration_images",
            str(INT8_CALIBRATION_IMAGES),
        )
        jobs += [
            ExportJob(
                EXPORT_NAMES["default"][INT8],
                "default",
                (
                    *int8,
                    "--calibration_dir",
                    str(calibration),
                    "--eval_dir",
                    str(held_out),
                    "--min_top1_agreement_int8",
                    "0",
                    *runs,
                ),
            ),
            ExportJob(
                EXPORT_NAMES["steel-segformer"][INT8],
                str(SEGMENTER),
                (*int8, "--calibration_dir", str(steel_calibration), "--eval_dir", str(steel_held_out), *runs),
            ),
        ]
    return jobs


def is_current(job: ExportJob) -> bool:
    """True when ``job``'s destination holds a complete export made by exactly this command."""
    report = read_export_report(job.destination)
    return bool(report) and report.get("command") == job.command() and (job.destination / ONNX_FILE).is_file()


def run_logged(command: list[str], log_path: Path, threads: int | None = None) -> float:
    """Run ``command`` in the project root with its output in ``log_path``; returns its seconds.

    Raises:
        ExportFailedError: it exited with an error (the message has its last log lines).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    with log_path.open("w") as log:
        result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if result.returncode != 0:
        raise ExportFailedError(
            f"{shlex.join(command)} exited with code {result.returncode}. "
            f"Last lines of {log_path}:\n{log_tail(log_path)}"
        )
    return time.perf_counter() - start


def make_exports(jobs: Sequence[ExportJob], re_export: bool, threads: int) -> dict[str, dict]:
    """Run (or reuse) every export; per job whether it was reused, its seconds, or why it failed."""
    from tqdm import tqdm

    outcomes = {}
    for job in tqdm(jobs, desc="exports (minutes each)", unit="export"):
        if not re_export and is_current(job):
            outcomes[job.name] = {"reused": True, "command": job.command()}
            continue
        log_path = EXPORTS / "logs" / f"{job.name}.log"
        try:
            seconds = run_logged([sys.executable, "-m", "train.export", *job.arguments()], log_path, threads)
        except ExportFailedError as error:
            shutil.rmtree(job.destination, ignore_errors=True)  # a stale older export must not be measured
            outcomes[job.name] = {"reused": False, "command": job.command(), "failed": str(error)}
            continue
        outcomes[job.name] = {"reused": False, "command": job.command(), "seconds": round(seconds, 1)}
    return outcomes


def file_sizes_mib(directory: Path) -> dict[str, float | None]:
    """Sizes of ``model.safetensors`` and ``model.onnx`` in ``directory``, MiB (None when absent)."""
    return {
        name: round((directory / name).stat().st_size / _MEBIBYTE, 2) if (directory / name).is_file() else None
        for name in (WEIGHTS_FILE, ONNX_FILE)
    }


def export_summary(directory: Path) -> dict | None:
    """What the export recorded: the shipped variant, every variant's figures, the CPU and its flags."""
    report = read_export_report(directory)
    if report is None:
        return None
    quantization = report.get("quantization") or {}
    variants = [
        {
            key: entry.get(key)
            for key in (
                "variant",
                "agreement",
                "top1_agreement_without_near_ties",
                "max_abs_logit_diff",
                "latency_ms_onnx",
                "latency_ms_eager",
                "meets_floor",
            )
        }
        for entry in quantization.get("variants", [])
    ]
    return {
        "precision": report.get("precision"),
        "chosen_variant": quantization.get("chosen"),
        "variants": variants,
        "held_out_images": (report.get("held_out") or {}).get("images"),
        "exported": {
            key: value for key, value in (report.get("exported") or {}).items() if not isinstance(value, dict)
        },
        "cpu": report.get("cpu"),
        "cpu_flags": report.get("cpu_flags"),
    }


# ---------------------------------------------------------------------------------------------
# Agreement with eager.
# ---------------------------------------------------------------------------------------------


def classifier_logits(classifier, paths: Sequence[Path], batch: int = 25, progress: str | None = None) -> np.ndarray:
    """``classifier``'s logits on every image in ``paths``, ``batch`` at a time: ``(N, C)`` float32."""
    from common.image_io import load_image

    starts = range(0, len(paths), batch)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=progress, unit="batch")
    rows = []
    for start in starts:
        images = [load_image(path) for path in paths[start : start + batch]]
        rows.append(classifier.forward(classifier.preprocess(images)).float().numpy())
    return np.concatenate(rows)


def classifier_agreement(eager: np.ndarray, exported: np.ndarray, near_tie: float = 0.1) -> dict:
    """Top-1 agreement and largest logit difference of ``exported`` against ``eager``, with near ties.

    A near tie is an image whose top two eager logits are within ``near_tie``: any change of
    arithmetic may swap those, so agreement without them is reported too.
    """
    figures = logit_parity(eager, exported)
    top2 = np.sort(eager, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] >= near_tie
    same = eager.argmax(-1) == exported.argmax(-1)
    return {
        **{key: round(value, 8) for key, value in figures.items()},
        "images": len(eager),
        "disagreements": int((~same).sum()),
        "near_ties": int((~clear).sum()),
        "top1_agreement_without_near_ties": round(float(same[clear].mean()), 6) if clear.any() else 1.0,
    }


def defect_pixel_agreement(eager_maps: Sequence[np.ndarray], other_maps: Sequence[np.ndarray]) -> dict:
    """Served label maps of another runtime against eager's, as the export's floor counts them.

    Defect pixels (label > 0) painted the same class by both, over the larger of the two defect
    areas, so painting extra defects costs as much as losing some.
    """
    if len(eager_maps) != len(other_maps):
        raise ValueError(f"{len(eager_maps)} eager label maps but {len(other_maps)} to compare")
    eager_defect = sum(int((m > 0).sum()) for m in eager_maps)
    other_defect = sum(int((m > 0).sum()) for m in other_maps)
    same = sum(int(((e > 0) & (e == o)).sum()) for e, o in zip(eager_maps, other_maps))
    larger = max(eager_defect, other_defect)
    return {
        "defect_pixel_agreement": round(same / larger, 6) if larger else 1.0,
        "eager_defect_pixels": eager_defect,
        "defect_pixels": other_defect,
        "same_class_defect_pixels": same,
        "pixel_agreement": round(
            sum(int((e == o).sum()) for e, o in zip(eager_maps, other_maps)) / sum(m.size for m in eager_maps), 6
        ),
    }


def segmenter_quality(segmenters: dict, strips: Sequence[SteelImage]) -> dict[str, dict]:
    """Per runtime: Dice against the generated masks, and (not for eager) agreement with eager's maps."""
    from tqdm import tqdm

    truth = np.stack([strip.mask for strip in strips])
    maps = {}
    for runtime, segmenter in segmenters.items():
        maps[runtime] = [
            segmenter.segment(str(strip.path)).label_map
            for strip in tqdm(strips, desc=f"segment held-out strips ({runtime})", unit="strip")
        ]
    id2label = segmenters[EAGER].id2label
    quality = {}
    for runtime, runtime_maps in maps.items():
        dice = segmentation_metrics(np.stack(runtime_maps), truth, id2label)
        quality[runtime] = {
            "mean_dice": round(dice["mean_dice"], 6),
            "mean_dice_defective_images": round(dice["mean_dice_defective_images"], 6),
        }
        if runtime != EAGER:
            quality[runtime].update(defect_pixel_agreement(maps[EAGER], runtime_maps))
            quality[runtime]["mean_dice_change"] = round(dice["mean_dice"] - quality[EAGER]["mean_dice"], 6)
    return quality


# ---------------------------------------------------------------------------------------------
# Goals.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    """One figure of a goal and its bound: ``value >= bound`` (or ``<=`` with ``at_most``)."""

    figure: str
    value: float | None  # None: not measured (skipped, or its export failed)
    bound: float
    at_most: bool = False

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.bound if self.at_most else self.value >= self.bound

    def describe(self) -> str:
        shown = "not measured" if self.value is None else f"{self.value:.4g}"
        return f"{self.figure} {shown} ({'<=' if self.at_most else '>='} {self.bound:g})"


def goal_verdict(criteria: Sequence[Criterion]) -> bool | None:
    """Met when every criterion is; not met when any measured one is not; None when none can be judged yet."""
    verdicts = [criterion.met for criterion in criteria]
    if False in verdicts:
        return False
    return None if None in verdicts else True


def ratio(latency: dict, group: str, slow: str, fast: str) -> float | None:
    """Median of ``slow`` over median of ``fast`` in ``latency[group]``; None when either is missing."""
    stats = latency.get(group, {})
    if slow not in stats or fast not in stats:
        return None
    return round(stats[slow]["median_ms"] / stats[fast]["median_ms"], 3)


def overhead(latency: dict, pipeline: str, forward: str, runtime: str) -> float | None:
    """Median of ``runtime``'s pipeline call over the median of its network calls alone; None when missing."""
    pipeline_stats, forward_stats = latency.get(pipeline, {}).get(runtime), latency.get(forward, {}).get(runtime)
    if pipeline_stats is None or forward_stats is None:
        return None
    return round(pipeline_stats["median_ms"] / forward_stats["median_ms"], 3)


def _figure(quality: dict, model: str, runtime: str, key: str) -> float | None:
    value = quality.get(model, {}).get(runtime, {}).get(key)
    return None if value is None else float(value)


def evaluate_goals(latency: dict, quality: dict) -> dict[str, dict]:
    """Each goal with its figures and whether it is met (``None``: a figure was not measured).

    Args:
        latency: group -> runtime -> ``latency_stats``; groups ``classifier_forward``,
            ``classify``, ``segmenter_tile``, ``segment``, ``segment_forward``.
        quality: ``classifier`` / ``segmenter`` -> runtime -> agreement and Dice figures.
    """
    dice_change = _figure(quality, "segmenter", INT8, "mean_dice_change")
    goals = {
        "default_fp32_2x_eager_same_top1": [
            Criterion("speed-up", ratio(latency, "classifier_forward", EAGER, FP32), MIN_FP32_SPEEDUP_CLASSIFIER),
            Criterion("top-1 agreement", _figure(quality, "classifier", FP32, "top1_agreement"), MIN_TOP1_FP32),
        ],
        "default_int8_1.3x_fp32_99pct_top1": [
            Criterion(
                "speed-up over fp32", ratio(latency, "classifier_forward", FP32, INT8), MIN_INT8_OVER_FP32_CLASSIFIER
            ),
            Criterion("top-1 agreement", _figure(quality, "classifier", INT8, "top1_agreement"), MIN_TOP1_INT8),
        ],
    }
    for group, what in (("segmenter_tile", "tile forward"), ("segment", "strip segment()")):
        goals[f"segmenter_fp32_1.5x_eager_{group}"] = [
            Criterion(f"speed-up, {what}", ratio(latency, group, EAGER, FP32), MIN_FP32_SPEEDUP_SEGMENTER)
        ]
        goals[f"segmenter_int8_2.5x_eager_98pct_defect_pixels_dice_0.01_{group}"] = [
            Criterion(f"speed-up, {what}", ratio(latency, group, EAGER, INT8), MIN_INT8_SPEEDUP_SEGMENTER),
            Criterion(
                "defect-pixel agreement",
                _figure(quality, "segmenter", INT8, "defect_pixel_agreement"),
                MIN_DEFECT_PIXELS_INT8,
            ),
            Criterion(
                "|mean Dice change|",
                None if dice_change is None else abs(dice_change),
                MAX_DICE_CHANGE_INT8,
                at_most=True,
            ),
        ]
    for runtime in RUNTIMES:
        for pipeline, raw, what in (
            ("classify", "classifier_forward", "classify() / forward"),
            ("segment", "segment_forward", "segment() / stage 1 + tile forwards"),
        ):
            goals[f"pipeline_within_1.3x_of_forward_{pipeline}_{runtime}"] = [
                Criterion(what, overhead(latency, pipeline, raw, runtime), MAX_PIPELINE_OVER_FORWARD, at_most=True)
            ]
    return {
        name: {
            "met": goal_verdict(criteria),
            "figures": {c.figure: c.value for c in criteria},
            "text": "; ".join(c.describe() for c in criteria),
        }
        for name, criteria in goals.items()
    }


# ---------------------------------------------------------------------------------------------
# Measuring.
# ---------------------------------------------------------------------------------------------


def time_interleaved(
    variants: dict[str, Callable[[], object]], rounds: int, warmup: int, desc: str
) -> dict[str, list[float]]:
    """``time_round_robin`` one round at a time under a tqdm bar; the calls stay interleaved."""
    from tqdm import tqdm

    if warmup:
        time_round_robin(variants, rounds=warmup)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in tqdm(range(rounds), desc=desc, unit="round"):
        for name, values in time_round_robin(variants, rounds=1).items():
            samples[name] += values
    return samples


def split_latency(samples: dict[str, list[float]]) -> dict[str, dict[str, dict]]:
    """``"group/runtime"`` sample lists -> group -> runtime -> ``latency_stats``."""
    latency: dict[str, dict[str, dict]] = {}
    for key, values in samples.items():
        group, runtime = key.split("/")
        latency.setdefault(group, {})[runtime] = latency_stats(values)
    return latency


def load_classifiers(runtimes: Sequence[str]) -> dict:
    """The default classifier per runtime: eager from ``default``, ONNX from this benchmark's exports."""
    from pipelines.classification import ImageClassifier

    names = EXPORT_NAMES["default"]
    sources = {
        EAGER: ("default", "torch"),
        FP32: (EXPORTS / names[FP32], "onnx"),
        INT8: (EXPORTS / names[INT8], "onnx"),
    }
    return {
        runtime: ImageClassifier.from_pretrained(sources[runtime][0], runtime=sources[runtime][1])
        for runtime in runtimes
    }


def load_segmenters(runtimes: Sequence[str]) -> dict:
    """The demo pair per runtime, tiled at 512; the ONNX pairs share the float32 stage 1."""
    from pipelines.segmentation import DefectSegmenter

    stage1_onnx, names = EXPORTS / EXPORT_NAMES["steel-stage1"][FP32], EXPORT_NAMES["steel-segformer"]
    sources = {
        EAGER: (SEGMENTER, STAGE1, "torch"),
        FP32: (EXPORTS / names[FP32], stage1_onnx, "onnx"),
        INT8: (EXPORTS / names[INT8], stage1_onnx, "onnx"),
    }
    return {
        runtime: DefectSegmenter.from_pretrained(
            sources[runtime][0], stage1=sources[runtime][1], runtime=sources[runtime][2], tile_width=TILE_WIDTH
        )
        for runtime in runtimes
    }


def classifier_variants(classifiers: dict, photo: Path) -> dict[str, Callable[[], object]]:
    """Per runtime: the raw forward on prepared ``pixel_values``, and ``classify()`` of the file."""
    from common.image_io import load_image

    variants = {}
    for runtime, classifier in classifiers.items():
        pixel_values = classifier.preprocess([load_image(photo)])
        variants[f"classifier_forward/{runtime}"] = lambda c=classifier, x=pixel_values: c.forward(x)
    for runtime, classifier in classifiers.items():
        variants[f"classify/{runtime}"] = lambda c=classifier: c.classify(str(photo))
    return variants


def segmenter_variants(segmenters: dict, strip: Path) -> dict[str, Callable[[], object]]:
    """Per runtime: one tile's forward, stage 1 plus every tile of the strip, and ``segment()`` of the file."""
    from common.image_io import load_image

    image = load_image(strip)
    variants = {}
    calls = {}
    for runtime, segmenter in segmenters.items():
        tiles, _ = segmenter.preprocess(image)
        stage1_input = segmenter.stage1.preprocess([image])
        variants[f"segmenter_tile/{runtime}"] = lambda s=segmenter, t=tiles[:1]: s.forward(t)
        calls[runtime] = (segmenter, tiles, stage1_input)
    for runtime, (segmenter, tiles, stage1_input) in calls.items():
        variants[f"segment_forward/{runtime}"] = lambda s=segmenter, t=tiles, x=stage1_input: (
            s.stage1.forward(x),
            s.forward_tiles(t),
        )
    for runtime, segmenter in segmenters.items():
        variants[f"segment/{runtime}"] = lambda s=segmenter: s.segment(str(strip))
    return variants


def held_out_paths(folder: Path, manifest: dict) -> list[Path]:
    return [folder / name for name in manifest["files"]]


def run_benchmark(args: argparse.Namespace) -> dict:
    """Make the data and the exports, load every runtime, measure, judge the goals; the report."""
    import torch

    torch.set_num_threads(args.threads)  # ONNX Runtime sessions take torch's thread count (OnnxNetwork)
    machine = machine_info()  # first, so its load average is the one before this run adds to it
    started = time.perf_counter()
    log_dir = EXPORTS / "logs"
    held_out_dir = held_out_folder(args.n_heldout)
    manifest = write_held_out_images(held_out_dir, args.n_heldout, progress=True)
    calibration = ensure_calibration_images(log_dir)
    strips = held_out_steel(DATA, args.n_strips, STEEL_HELD_OUT_SEED)
    steel_held_out = strips[0].path.parents[1]  # the Kaggle-layout folder held_out_steel wrote
    steel_calibration = steel_calibration_folder()
    jobs = export_jobs(held_out_dir, calibration, steel_held_out, steel_calibration, with_int8=not args.skip_int8)
    exports = make_exports(jobs, args.re_export, args.threads)
    data_and_exports_s = time.perf_counter() - started

    def available(model: str) -> list[str]:
        """The runtimes of ``model`` whose exports (and, for the pair, stage 1's) were made."""
        needed = {EAGER: [], **{rt: [name] for rt, name in EXPORT_NAMES[model].items()}}
        if model == "steel-segformer":
            needed[FP32].append(EXPORT_NAMES["steel-stage1"][FP32])
            needed[INT8].append(EXPORT_NAMES["steel-stage1"][FP32])
        return [rt for rt in RUNTIMES if all(n in exports and "failed" not in exports[n] for n in needed[rt])]

    classifiers = load_classifiers(available("default"))
    segmenters = load_segmenters(available("steel-segformer"))
    paths = held_out_paths(held_out_dir, manifest)

    # Quality first (each runtime on every held-out input), then the interleaved timings.
    logits = {rt: classifier_logits(c, paths, progress=f"classify held-out ({rt})") for rt, c in classifiers.items()}
    quality = {
        "classifier": {rt: classifier_agreement(logits[EAGER], logits[rt]) for rt in classifiers if rt != EAGER},
        "segmenter": segmenter_quality(segmenters, strips),
    }
    photo = benchmark_photo_path()
    samples = time_interleaved(classifier_variants(classifiers, photo), args.rounds, args.warmup, "time classifier")
    samples.update(
        time_interleaved(
            segmenter_variants(segmenters, strips[0].path),
            args.segment_rounds,
            min(args.warmup, 1),
            "time segmenter",
        )
    )
    latency = split_latency(samples)
    sizes = {
        "default": {EAGER: file_sizes_mib(Path(classifiers[EAGER].checkpoint_dir))},
        "steel-segformer": {EAGER: file_sizes_mib(SEGMENTER)},
    }
    reports = {}
    for job in jobs:
        model, runtime = next((m, rt) for m, names in EXPORT_NAMES.items() for rt, n in names.items() if n == job.name)
        sizes.setdefault(model, {})[runtime] = file_sizes_mib(job.destination)
        reports[job.name] = export_summary(job.destination)
    cpu = next((r for r in reports.values() if r), {}) or {}
    ratios = {
        "classifier_forward_fp32_over_eager_speedup": ratio(latency, "classifier_forward", EAGER, FP32),
        "classifier_forward_int8_over_fp32_speedup": ratio(latency, "classifier_forward", FP32, INT8),
        "classifier_forward_int8_over_eager_speedup": ratio(latency, "classifier_forward", EAGER, INT8),
    }
    for group in ("segmenter_tile", "segment"):
        ratios[f"{group}_fp32_over_eager_speedup"] = ratio(latency, group, EAGER, FP32)
        ratios[f"{group}_int8_over_eager_speedup"] = ratio(latency, group, EAGER, INT8)
        ratios[f"{group}_int8_over_fp32_speedup"] = ratio(latency, group, FP32, INT8)
    for runtime in RUNTIMES:
        ratios[f"classify_over_forward_{runtime}"] = overhead(latency, "classify", "classifier_forward", runtime)
        ratios[f"segment_over_forward_{runtime}"] = overhead(latency, "segment", "segment_forward", runtime)
    return {
        "benchmark": "export",
        "settings": {
            "rounds": args.rounds,
            "segment_rounds": args.segment_rounds,
            "warmup_rounds": args.warmup,
            "threads": args.threads,
            "n_heldout": args.n_heldout,
            "n_strips": args.n_strips,
            "int8_variants": None if args.skip_int8 else INT8_VARIANTS,
            "int8_calibration_images": None if args.skip_int8 else INT8_CALIBRATION_IMAGES,
            "classify_image": photo.name,
            "segment_strip": strips[0].image_id,
        },
        "machine": {**machine, "cpu_flags": cpu.get("cpu_flags"), "cpu_in_export_report": cpu.get("cpu")},
        "held_out": {
            "classifier": {key: manifest[key] for key in ("n", "seed", "photos", "generated")}
            | {"folder": str(held_out_dir), "calibration_folder": str(calibration)},
            "segmenter": {
                "strips": len(strips),
                "seed": STEEL_HELD_OUT_SEED,
                "folder": str(steel_held_out),
                "defective_strips": sum(s.defective for s in strips),
                "calibration_folder": str(steel_calibration),
            },
        },
        "exports": exports,
        "export_reports": reports,
        "model_sizes_mib": sizes,
        "latency": latency,
        "ratios": ratios,
        "quality": quality,
        "goals": evaluate_goals(latency, quality),
        "data_and_exports_s": round(data_and_exports_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
    }


# ---------------------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------------------


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


def summary_text(report: dict) -> str:
    """The figures people read first: latencies, ratios, agreement, sizes, goals, the machine."""
    machine = report["machine"]
    flags = machine.get("cpu_flags") or {}
    shown_flags = ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in flags.items()) or "unknown"
    settings = report["settings"]
    lines = [
        f"export bench: {machine['cpu_model']} ({shown_flags}); {settings['threads']} threads for torch and ONNX "
        f"Runtime; load average {machine['load_average_1m_at_start']:.1f} at start",
        f"  rounds: classifier {settings['rounds']}, segmenter {settings['segment_rounds']} (interleaved)",
    ]
    for group, stats in report["latency"].items():
        cells = "   ".join(
            f"{runtime} {s['median_ms']:8.1f} ms (p95 {s['p95_ms']:.1f})" for runtime, s in stats.items()
        )
        lines.append(f"  {group:<19} {cells}")
    lines.append("  ratios: " + ", ".join(f"{k} {v}" for k, v in report["ratios"].items() if v is not None))
    for runtime, figures in report["quality"]["classifier"].items():
        lines.append(
            f"  default {runtime}: top-1 agreement {figures['top1_agreement']:.2%} on {figures['images']} held-out "
            f"images ({figures['disagreements']} differ, {figures['near_ties']} near ties; "
            f"{figures['top1_agreement_without_near_ties']:.2%} without them), max abs logit diff "
            f"{figures['max_abs_logit_diff']:.3g}"
        )
    for runtime, figures in report["quality"]["segmenter"].items():
        line = f"  demo pair {runtime}: mean Dice {figures['mean_dice']:.4f}"
        if runtime != EAGER:
            line += (
                f" (change {figures['mean_dice_change']:+.4f}), defect-pixel agreement "
                f"{figures['defect_pixel_agreement']:.2%} ({figures['same_class_defect_pixels']} of "
                f"{max(figures['eager_defect_pixels'], figures['defect_pixels'])}), pixel agreement "
                f"{figures['pixel_agreement']:.4%}"
            )
        lines.append(line)
    for name, export in report["export_reports"].items():
        if export and export["variants"]:
            tried = "; ".join(
                f"{v['variant']} {v['agreement']:.1%} ({v['latency_ms_onnx']:.1f} ms)" for v in export["variants"]
            )
            lines.append(f"  {name}: shipped {export['chosen_variant']}; variants as the export measured them: {tried}")
    for name, outcome in report["exports"].items():
        if "failed" in outcome:
            # The command, and the error: the last line of the export's log.
            message = outcome["failed"].splitlines()
            lines.append(f"  export {name} FAILED: {message[0]} ... {message[-1]}")
    for model, sizes in report["model_sizes_mib"].items():
        cells = ", ".join(
            f"{runtime} "
            + (" / ".join(f"{file} {mib} MiB" for file, mib in files.items() if mib is not None) or "none")
            for runtime, files in sizes.items()
        )
        lines.append(f"  sizes {model}: {cells}")
    for name, goal in report["goals"].items():
        lines.append(f"  goal {name}: {_verdict(goal['met'])} - {goal['text']}")
    lines.append(f"  took {report['total_s']:.0f} s ({report['data_and_exports_s']:.0f} s of it data and exports)")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds of the classifier")
    parser.add_argument(
        "--segment-rounds", type=int, default=8, help="interleaved timing rounds of the demo pair (seconds each)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="discarded rounds before timing (the pair gets 1)")
    parser.add_argument("--threads", type=int, default=2, help="threads of torch and of ONNX Runtime")
    parser.add_argument(
        "--n-heldout", type=int, default=MIN_HELD_OUT, help=f"held-out images of the default model (>= {MIN_HELD_OUT})"
    )
    parser.add_argument("--n-strips", type=int, default=20, help="held-out steel strips (seed 1)")
    parser.add_argument("--skip-int8", action="store_true", help="measure eager and float32 ONNX only")
    parser.add_argument("--re-export", action="store_true", help="export again even when the same export exists")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output path (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    check_at_least(
        parser,
        ("--rounds", args.rounds, 1),
        ("--segment-rounds", args.segment_rounds, 1),
        ("--warmup", args.warmup, 0),
        ("--threads", args.threads, 1),
        ("--n-strips", args.n_strips, 1),
    )
    if args.n_heldout < MIN_HELD_OUT:
        parser.error(
            f"--n-heldout must be at least {MIN_HELD_OUT}, got {args.n_heldout}: with fewer images one changed "
            "answer moves top-1 agreement by more than the 1% the int8 goal allows"
        )
    if args.out.suffix != ".json" or args.out.is_dir():
        parser.error(f"--out must be a .json file path, got {args.out}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: export, measure, write the JSON file, print it, summarise on stderr."""
    args = parse_args(argv)
    report = run_benchmark(args)
    publish_report(report, args.out, summary_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
