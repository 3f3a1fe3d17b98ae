"""Latency of the default classifier at batch 1 on this CPU, and what each layer adds to it.

Measured in this process, interleaved round by round (a, b, c, a, b, c, ...):

* ``raw_forward`` (a): the model call alone, on ``pixel_values`` prepared once.
* ``pipeline_end_to_end`` (b): ``ImageClassifier.classify(path)`` on a JPEG file: decode,
  preprocess, forward, top-k.
* ``transformers_pipeline`` (c): ``transformers.pipeline("image-classification")`` on the same
  checkpoint directory and the same file.

Then against ``python app.py`` started as a subprocess:

* ``app_request`` (d): one ``/classify`` request through ``gradio_client``, upload included.
* cold start: process start -> HTTP server answers -> first prediction returned.
* peak RSS of the app process (``VmHWM``) and of this benchmark process.

The issue's goals: (b) within 1.3x of (a), and (b) faster than (c). A missed goal is reported,
not raised: this is a measurement, not a test.

    python -m bench.classification [--out PATH] [--repeats N] [--no-app]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import (
    BENCHMARK_PHOTO,
    RESULTS,
    benchmark_photo_path,
    check_at_least,
    free_port,
    latency_stats,
    machine_info,
    own_peak_rss_mb,
    process_peak_rss_mb,
    publish_report,
    stay_offline,
    stop_process,
    time_round_robin,
    wait_for_http,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = RESULTS / "classification.json"
MODEL = "default"
PHOTO = BENCHMARK_PHOTO
JPEG_QUALITY = 90
TOP_K = 5  # what the app's slider starts at and what the transformers pipeline returns by default
MAX_OVERHEAD_VS_FORWARD = 1.3


def write_benchmark_jpeg(directory: Path) -> Path:
    """Save the bundled coffee photo as a quality-90 JPEG, so decoding costs what a real upload costs.

    Raises:
        FileNotFoundError: scikit-image (which ships the photo) is not installed.
    """
    from PIL import Image

    source = benchmark_photo_path(PHOTO)
    target = Path(directory) / "coffee.jpg"
    with Image.open(source) as photo:
        photo.convert("RGB").save(target, format="JPEG", quality=JPEG_QUALITY)
    return target


def load_models():
    """Our classifier and a transformers pipeline, both from the default checkpoint directory."""
    from transformers import pipeline

    from common.default_model import default_checkpoint_dir
    from pipelines.classification import ImageClassifier

    classifier = ImageClassifier.from_pretrained(MODEL)
    hf_pipeline = pipeline("image-classification", model=str(default_checkpoint_dir()), device=-1)
    return classifier, hf_pipeline


def in_process_variants(classifier, hf_pipeline, image_path: Path) -> dict[str, Callable[[], object]]:
    """The (a), (b), (c) calls, in the order the round robin runs them."""
    import torch

    from common.image_io import load_image

    pixel_values = classifier.preprocess([load_image(image_path)])
    path = str(image_path)

    def raw_forward():
        with torch.inference_mode():
            return classifier.model(pixel_values=pixel_values).logits

    return {
        "raw_forward": raw_forward,
        "pipeline_end_to_end": lambda: classifier.classify(path, top_k=TOP_K),
        "transformers_pipeline": lambda: hf_pipeline(path, top_k=TOP_K),
    }


def top1_labels(classifier, hf_pipeline, image_path: Path) -> dict[str, str]:
    """Top-1 label of (b) and (c): they should agree, or the comparison is not like for like."""
    from common.image_io import load_image

    # The same load -> preprocess -> forward path as classify(), read from the logits so this
    # check does not depend on the shape of classify()'s result object.
    logits = classifier.forward(classifier.preprocess([load_image(image_path)]))
    return {
        "pipeline_end_to_end": classifier.id2label[int(logits.argmax(dim=-1)[0])],
        "transformers_pipeline": hf_pipeline(str(image_path), top_k=1)[0]["label"],
    }


def classify_via_app(client, image_path: Path):
    """One ``/classify`` request, as a remote user sends it (the file is uploaded each time).

    Returns the endpoint's outputs unparsed; ``predict`` raises when the request fails.
    """
    from gradio_client import handle_file

    return client.predict(handle_file(str(image_path)), MODEL, TOP_K, api_name="/classify")


def start_app(port: int, image_path: Path, log_path: Path, timeout_s: float = 300.0):
    """Start ``python app.py --port PORT`` and time its cold start.

    Returns:
        ``(process, cold_start)``: the running process (the caller must stop it) and the
        seconds from process start until the server answered and until the first
        prediction came back.

    Raises:
        bench.common.AppStartError: the app exited or did not answer in time (the process is
            stopped before raising).
    """
    from gradio_client import Client

    url = f"http://127.0.0.1:{port}/"
    with log_path.open("w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for_http(url, process, timeout_s, log_path)
        server_up_s = time.perf_counter() - start
        classify_via_app(Client(url, verbose=False), image_path)
        first_prediction_s = time.perf_counter() - start
    except BaseException:
        stop_process(process)
        raise
    return process, {"server_up_s": round(server_up_s, 3), "first_prediction_s": round(first_prediction_s, 3)}


def measure_app(image_path: Path, rounds: int, warmup: int, log_path: Path, port: int | None = None) -> dict:
    """Cold start, request latency and peak RSS of the app in a subprocess, always stopped after."""
    from gradio_client import Client

    port = port or free_port()
    process, cold_start = start_app(port, image_path, log_path)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        samples = time_round_robin({"app_request": lambda: classify_via_app(client, image_path)}, rounds, warmup)
        # Read before stopping: VmHWM disappears with the process.
        peak_rss_mb, rss_source = process_peak_rss_mb(process.pid)
    finally:
        stop_process(process)
    return {
        "latency": latency_stats(samples["app_request"]),
        "cold_start_s": cold_start,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "peak_rss_source": rss_source,
        "port": port,
    }


def overhead_report(latency: dict[str, dict]) -> tuple[dict[str, float], dict[str, dict]]:
    """Ratios of medians between the variants, and whether the issue's goals are met."""
    median = {name: stats["median_ms"] for name, stats in latency.items()}
    vs_forward = median["pipeline_end_to_end"] / median["raw_forward"]
    vs_transformers = median["pipeline_end_to_end"] / median["transformers_pipeline"]
    ratios = {
        "pipeline_over_raw_forward": round(vs_forward, 3),
        "pipeline_over_transformers_pipeline": round(vs_transformers, 3),
    }
    if "app_request" in median:
        ratios["app_request_over_pipeline"] = round(median["app_request"] / median["pipeline_end_to_end"], 3)
    goals = {
        "pipeline_within_1.3x_of_raw_forward": {
            "ratio": ratios["pipeline_over_raw_forward"],
            "target": f"<= {MAX_OVERHEAD_VS_FORWARD}",
            "met": vs_forward <= MAX_OVERHEAD_VS_FORWARD,
        },
        "pipeline_faster_than_transformers_pipeline": {
            "ratio": ratios["pipeline_over_transformers_pipeline"],
            "target": "< 1.0",
            "met": vs_transformers < 1.0,
        },
    }
    return ratios, goals


def summary_text(report: dict) -> str:
    """A few lines for people: latencies, ratios, goals, cold start and memory."""
    machine = report["machine"]
    lines = [
        f"classification bench: model '{MODEL}', batch 1, {machine['torch_threads']} torch threads, "
        f"{machine['cpu_model']}",
    ]
    for name, stats in report["latency"].items():
        lines.append(
            f"  {name:<22} median {stats['median_ms']:8.2f} ms   p95 {stats['p95_ms']:8.2f} ms   n={stats['n']}"
        )
    for name, goal in report["goals"].items():
        verdict = "met" if goal["met"] else "NOT met"
        lines.append(f"  goal {name}: ratio {goal['ratio']:.3f} (target {goal['target']}) -> {verdict}")
    app = report["app"]
    if app is not None:
        cold = app["cold_start_s"]
        lines.append(
            f"  app cold start: server up {cold['server_up_s']:.1f} s, "
            f"first prediction {cold['first_prediction_s']:.1f} s; "
            f"app peak RSS {app['peak_rss_mb']:.0f} MiB ({app['peak_rss_source']})"
        )
    lines.append(f"  this process peak RSS {report['bench_process']['peak_rss_mb']:.0f} MiB")
    return "\n".join(lines)


def run_benchmark(rounds: int, warmup: int, app_rounds: int, with_app: bool, port: int | None = None) -> dict:
    """Measure everything and return the report (a JSON-ready dict)."""
    machine = machine_info()  # first, so the load average is the one before we add to it
    with tempfile.TemporaryDirectory(prefix="vispect-bench-") as work_dir:
        image_path = write_benchmark_jpeg(Path(work_dir))
        classifier, hf_pipeline = load_models()
        top1 = top1_labels(classifier, hf_pipeline, image_path)
        variants = in_process_variants(classifier, hf_pipeline, image_path)
        samples = time_round_robin(variants, rounds=rounds, warmup=warmup)
        latency = {name: latency_stats(values) for name, values in samples.items()}
        app = None
        if with_app:
            app = measure_app(
                image_path, app_rounds, warmup=min(warmup, 2), log_path=Path(work_dir) / "app.log", port=port
            )
            latency["app_request"] = app.pop("latency")
        ratios, goals = overhead_report(latency)
        return {
            "benchmark": "classification",
            "model": {"name": MODEL, "checkpoint_dir": classifier.checkpoint_dir, "batch_size": 1, "top_k": TOP_K},
            "image": {
                "source": PHOTO,
                "format": "JPEG",
                "quality": JPEG_QUALITY,
                "bytes": image_path.stat().st_size,
                "top1": top1,
            },
            "settings": {"rounds": rounds, "warmup_rounds": warmup, "app_rounds": app_rounds if with_app else None},
            "machine": machine,
            "latency": latency,
            "ratios": ratios,
            "goals": goals,
            "app": app,
            "bench_process": {"peak_rss_mb": round(own_peak_rss_mb(), 1)},
        }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.classification",
        description="Time the default classifier at batch 1 (raw forward, our pipeline, transformers' pipeline, "
        "the app) and write JSON.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output path (default {DEFAULT_OUT})")
    parser.add_argument("--repeats", type=int, default=50, help="measured rounds of the in-process variants")
    parser.add_argument("--warmup", type=int, default=5, help="discarded rounds before measuring (default 5)")
    parser.add_argument("--app-repeats", type=int, default=20, help="measured requests through the app (default 20)")
    parser.add_argument("--port", type=int, default=None, help="port for the app subprocess (default: a free one)")
    parser.add_argument("--no-app", action="store_true", help="skip the app subprocess (cold start, requests, RSS)")
    args = parser.parse_args(argv)
    check_at_least(
        parser, ("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0), ("--app-repeats", args.app_repeats, 1)
    )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the benchmark, write the JSON file, print it, summarise on stderr."""
    args = parse_args(argv)
    stay_offline()
    report = run_benchmark(args.repeats, args.warmup, args.app_repeats, with_app=not args.no_app, port=args.port)
    publish_report(report, args.out, summary_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
