"""Throughput of the Inspect tab on a zip of 200 images, against the pipeline's own batched loop.

Measured interleaved, round by round (a, b, c, d, a, b, c, d, ...), on the same 200 generated
images (machine parts and non-part images, JPEG, 256x256):

* ``inspect_app`` (a): one ``/inspect`` request to ``python app.py`` started as a subprocess,
  the zip uploaded each time: upload, unpacking, batched classification, the table, flagged
  thumbnails and the CSV/JSON downloads written (not fetched: a browser fetches them on demand).
* ``classify_files_batch_16`` (b) and ``classify_files_batch_8`` (c):
  ``pipelines.classification.classify_files`` over the unpacked files, in this process.
* ``classify_one_by_one`` (d): ``ImageClassifier.classify(path)`` per file.

Throughput is images per second from each variant's median round. The issue's goals: (a)
within 1.2x of (b), the same batch size, and (b) faster than (d). A missed goal is reported,
not raised: this is a measurement, not a test.

    python -m bench.inspect [--n 200] [--rounds 5] [--batch-size 16] [--threads N] [--model default] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import (
    RESULTS,
    check_at_least,
    free_port,
    latency_stats,
    machine_info,
    process_peak_rss_mb,
    publish_report,
    stay_offline,
    stop_process,
    time_round_robin,
    wait_for_http,
)
from common.archives import extract_zip
from common.onnx_network import read_cpu_flags
from datagen.parts import OTHER_KINDS, PART_KINDS, draw_other, draw_part
from pipelines.classification import ImageClassifier, classify_files

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = RESULTS / "inspect.json"
IMAGE_SIDE = 256
PART_SHARE = 0.8  # the rest are images of no part: what an inspection batch holds when it goes wrong
MIN_CONFIDENCE = 0.5  # the tab's default slider
MAX_OVER_BATCHED = 1.2
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")


def cpu_flags() -> dict[str, bool]:
    """Which of the vector extensions that matter for CPU inference this machine has."""
    flags = read_cpu_flags()
    if flags is None:  # not Linux: unknown
        return {}
    return {flag: flag in flags for flag in CPU_FLAGS}


def write_batch_zip(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` generated JPEGs (parts, then non-part images) in a zip, in a parts/ and an other/ folder."""
    rng = np.random.default_rng(seed)
    parts = round(n * PART_SHARE)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for index in range(n):
            if index < parts:
                kind = PART_KINDS[index % len(PART_KINDS)]
                image, _ = draw_part(kind, rng, IMAGE_SIDE)
                name = f"parts/{kind}_{index:04d}.jpg"
            else:
                kind = OTHER_KINDS[index % len(OTHER_KINDS)]
                image = draw_other(kind, rng, IMAGE_SIDE)
                name = f"other/{kind}_{index:04d}.jpg"
            with archive.open(name, "w") as member:
                image.save(member, format="JPEG", quality=90)
    return path


def start_app(port: int, model: str, log_path: Path, timeout_s: float = 300.0) -> subprocess.Popen:
    """``python app.py --port PORT`` offering ``model``, once it answers HTTP (the caller stops it)."""
    command = [sys.executable, "app.py", "--port", str(port)]
    if model != "default":
        command += ["--classifier", model]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", process, timeout_s, log_path)
    except BaseException:
        stop_process(process)
        raise
    return process


def inspect_via_app(client, archive: Path, model: str, batch_size: int):
    """One ``/inspect`` request: (summary, table, gallery, counts, downloads)."""
    from gradio_client import handle_file

    return client.predict(
        [handle_file(str(archive))], "classify", model, MIN_CONFIDENCE, batch_size, api_name="/inspect"
    )


def throughput(stats: dict, n: int) -> float:
    """Images per second at a variant's median round."""
    return round(n / (stats["median_ms"] / 1000), 2)


def run_benchmark(n: int, rounds: int, warmup: int, batch_size: int, model: str, port: int | None) -> dict:
    """Measure the four variants interleaved and return the report (JSON-ready)."""
    from gradio_client import Client

    machine = machine_info()  # first, so the load average is the one before we add to it
    with tempfile.TemporaryDirectory(prefix="vispect-bench-inspect-") as work:
        work_dir = Path(work)
        archive = write_batch_zip(work_dir / "batch.zip", n)
        files = [member.path for member in extract_zip(archive, work_dir / "unpacked")]
        classifier = ImageClassifier.from_pretrained(model)
        port = port or free_port()
        started = time.perf_counter()
        process = start_app(port, model, work_dir / "app.log")
        try:
            # The server's work only: a browser fetches the thumbnails and downloads later, on demand.
            client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
            first = inspect_via_app(client, archive, model, batch_size)  # loads the model in the app
            app_ready_s = time.perf_counter() - started
            variants = {
                "inspect_app": lambda: inspect_via_app(client, archive, model, batch_size),
                f"classify_files_batch_{batch_size}": lambda: list(
                    classify_files(classifier, files, batch_size=batch_size, progress=False)
                ),
                "classify_files_batch_8": lambda: list(classify_files(classifier, files, batch_size=8, progress=False)),
                "classify_one_by_one": lambda: [classifier.classify(path) for path in files],
            }
            samples = time_round_robin(variants, rounds=rounds, warmup=warmup)
            app_rss_mb, rss_source = process_peak_rss_mb(process.pid)
        finally:
            stop_process(process)
        zip_bytes = archive.stat().st_size
    latency = {name: latency_stats(values) for name, values in samples.items()}
    images_per_s = {name: throughput(stats, n) for name, stats in latency.items()}
    batched = images_per_s[f"classify_files_batch_{batch_size}"]
    over_batched = latency["inspect_app"]["median_ms"] / latency[f"classify_files_batch_{batch_size}"]["median_ms"]
    goals = {
        f"inspect_within_{MAX_OVER_BATCHED}x_of_batched_pipeline": {
            "ratio": round(over_batched, 3),
            "target": f"<= {MAX_OVER_BATCHED}",
            "met": over_batched <= MAX_OVER_BATCHED,
        },
        "batched_beats_one_by_one": {
            "ratio": round(batched / images_per_s["classify_one_by_one"], 3),
            "target": "> 1.0 (images/s, batched over one by one)",
            "met": batched > images_per_s["classify_one_by_one"],
        },
    }
    summary_cells = first[0]
    return {
        "benchmark": "inspect",
        "model": {"name": model, "runtime": classifier.runtime, "checkpoint_dir": classifier.checkpoint_dir},
        "images": {"n": n, "side": IMAGE_SIDE, "format": "JPEG", "part_share": PART_SHARE, "zip_bytes": zip_bytes},
        "settings": {
            "rounds": rounds,
            "warmup_rounds": warmup,
            "batch_size": batch_size,
            "min_confidence": MIN_CONFIDENCE,
        },
        "machine": {**machine, "cpu_flags": cpu_flags()},
        "latency_per_round": latency,
        "images_per_s": images_per_s,
        "goals": goals,
        "app": {
            "ready_s": round(app_ready_s, 1),
            "peak_rss_mb": round(app_rss_mb, 1),
            "peak_rss_source": rss_source,
            "first_summary": summary_cells,
        },
    }


def summary_text(report: dict) -> str:
    machine = report["machine"]
    flags = ", ".join(flag for flag, present in machine["cpu_flags"].items() if present) or "none of " + ", ".join(
        CPU_FLAGS
    )
    lines = [
        f"inspect bench: {report['images']['n']} images, model '{report['model']['name']}' "
        f"({report['model']['runtime']}), {machine['torch_threads']} torch threads, {machine['cpu_model']} ({flags})",
    ]
    for name, stats in report["latency_per_round"].items():
        lines.append(
            f"  {name:<24} {report['images_per_s'][name]:7.1f} images/s   "
            f"median round {stats['median_ms'] / 1000:6.2f} s   p95 {stats['p95_ms'] / 1000:6.2f} s   n={stats['n']}"
        )
    for name, goal in report["goals"].items():
        verdict = "met" if goal["met"] else "NOT met"
        lines.append(f"  goal {name}: ratio {goal['ratio']:.3f} (target {goal['target']}) -> {verdict}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="images in the batch (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per variant (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds before measuring (default 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="the Inspect tab's batch size (default 16)")
    parser.add_argument("--model", default="default", help="classifier: 'default' or a checkpoint directory")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and ONNX Runtime threads, here and in the app (default: torch's)",
    )
    parser.add_argument("--port", type=int, default=None, help="port for the app subprocess (default: a free one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output path (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    check_at_least(parser, ("--n", args.n, 1), ("--rounds", args.rounds, 1), ("--warmup", args.warmup, 0),
                   ("--batch-size", args.batch_size, 1), ("--threads", args.threads or 1, 1))  # fmt: skip
    if args.n > 1000:
        parser.error(f"--n must be at most 1000 (the Inspect tab's limit per run), got {args.n}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the benchmark, write the JSON file, print it, summarise on stderr."""
    args = parse_args(argv)
    stay_offline()
    if args.threads:
        import torch

        # ONNX Runtime sessions take torch's thread count (common.onnx_network); the app subprocess
        # reads OMP_NUM_THREADS when torch starts.
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    report = run_benchmark(args.n, args.rounds, args.warmup, args.batch_size, args.model, args.port)
    publish_report(report, args.out, summary_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
