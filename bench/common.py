"""Measurement helpers shared by the benchmarks: timing, statistics, memory, machine, subprocesses."""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

_MEBIBYTE = 1024 * 1024
# Where every benchmark writes its JSON and its generated data (git-ignored).
RESULTS = Path(__file__).resolve().parent / "results"


def check_at_least(parser, *checks: tuple[str, float, float]) -> None:
    """``parser.error`` for the first ``(flag, value, lowest)`` whose value is below its lowest."""
    for flag, value, low in checks:
        if value < low:
            parser.error(f"{flag} must be at least {low}, got {value}")


def stay_offline() -> None:
    """Keep Hub and analytics lookups (and their network timeouts) out of the numbers, here and in
    any app subprocess, which inherits the environment."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


class AppStartError(RuntimeError):
    """A server process under test did not come up; the message carries the end of its log."""


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """Median, 95th percentile and count of latency samples in milliseconds.

    The percentile interpolates linearly between the two nearest samples (NumPy's default),
    so with few samples p95 lies between the largest values instead of jumping to the maximum.

    Raises:
        ValueError: ``samples_ms`` is empty.
    """
    if len(samples_ms) == 0:
        raise ValueError("latency_stats needs at least one sample, got none")
    samples = np.asarray(samples_ms, dtype=float)
    # Microseconds are already far below what a timer on a shared machine can resolve.
    return {
        "median_ms": round(float(np.median(samples)), 3),
        "p95_ms": round(float(np.percentile(samples, 95)), 3),
        "n": len(samples),
    }


def time_round_robin(
    variants: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 0
) -> dict[str, list[float]]:
    """Call every variant once per round, in the mapping's order, and time each call.

    Interleaving (a, b, c, a, b, c, ...) instead of timing each variant in its own block means
    a burst of load from another process on a shared machine slows all variants alike, so
    their ratios stay meaningful even when the absolute numbers move.

    Args:
        variants: name -> zero-argument callable doing one unit of work.
        rounds: measured rounds; each variant gets exactly this many samples.
        warmup: rounds run first and discarded (allocator, caches, lazy initialisation).

    Returns:
        name -> wall-clock latency of each measured call, in milliseconds.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if warmup < 0:
        raise ValueError(f"warmup must be 0 or more, got {warmup}")
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(warmup + rounds):
        for name, variant in variants.items():
            start = time.perf_counter_ns()
            variant()
            elapsed_ms = (time.perf_counter_ns() - start) / 1e6
            if round_index >= warmup:
                samples[name].append(elapsed_ms)
    return samples


def vm_hwm_bytes(status_text: str) -> int | None:
    """The ``VmHWM`` line (peak resident set size) of a ``/proc/<pid>/status`` text, in bytes."""
    for line in status_text.splitlines():
        if line.startswith("VmHWM:"):
            value, unit = line.split()[1:3]
            if unit != "kB":  # the kernel has always written kB; anything else is not this format
                raise ValueError(f"unexpected VmHWM unit {unit!r} in /proc status")
            return int(value) * 1024
    return None


def process_peak_rss_mb(pid: int) -> tuple[float, str]:
    """Peak RSS of a running process in MiB, and where the number came from.

    ``VmHWM`` is the kernel's own high-water mark, so it catches short spikes that polling
    ``memory_info().rss`` would miss; the psutil reading (current RSS) is only a fallback
    for systems without ``/proc``.
    """
    try:
        peak = vm_hwm_bytes(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        peak = None
    if peak is not None:
        return peak / _MEBIBYTE, "VmHWM"
    import psutil

    return psutil.Process(pid).memory_info().rss / _MEBIBYTE, "psutil rss (current, not peak)"


def own_peak_rss_mb() -> float:
    """Peak RSS of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports ru_maxrss in kB, macOS in bytes.
    return peak / _MEBIBYTE if sys.platform == "darwin" else peak / 1024


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    """Block until ``url`` answers any HTTP response, while ``process`` keeps running.

    Raises:
        AppStartError: the process exited first or ``timeout_s`` passed; includes its log tail.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AppStartError(
                f"server process exited with code {process.returncode} before {url} answered. "
                f"Last lines of {log_path}:\n{log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # an error status is still an answer: the HTTP server is up
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise AppStartError(
        f"{url} did not answer within {timeout_s:.0f} s. Last lines of {log_path}:\n{log_tail(log_path)}"
    )


def stop_process(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """Terminate ``process`` (SIGTERM), killing it if it does not exit within ``timeout_s``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def cpu_model(cpuinfo_text: str) -> str | None:
    """The first ``model name`` of a ``/proc/cpuinfo`` text (x86), or None."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return None


def _read_cpu_model() -> str:
    try:
        model = cpu_model(Path("/proc/cpuinfo").read_text())
    except OSError:
        model = None
    return model or platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    # Read from package metadata so that recording gradio's version does not import gradio
    # (hundreds of MB) into the process whose peak RSS we report.
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """What the numbers were measured on: CPU, cores, threads, library versions, date."""
    import psutil
    import torch

    return {
        "cpu_model": _read_cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        # On a shared machine this says how busy it was when the run started.
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "openblas_coretype_set": "OPENBLAS_CORETYPE" in os.environ,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in ("torch", "transformers", "timm", "gradio", "gradio_client")},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def publish_report(report: dict, out: Path, summary: str) -> None:
    """Write ``report`` as JSON to ``out``, print it on stdout and ``summary`` on stderr."""
    text = json.dumps(report, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    print(summary, file=sys.stderr)
    print(f"written to {out}", file=sys.stderr)


BENCHMARK_PHOTO = "coffee.png"


def benchmark_photo_path(name: str = BENCHMARK_PHOTO) -> Path:
    """A real photo that ships with scikit-image (via pipelines.examples), so benchmarks need no download.

    Raises:
        FileNotFoundError: scikit-image (which ships the photo) is not installed.
    """
    from pipelines.examples import example_photos

    source = next((path for path in example_photos() if path.name == name), None)
    if source is None:
        raise FileNotFoundError(
            f"The benchmark photo {name} comes with scikit-image, which is not installed. "
            "Install it with: pip install -r requirements.txt"
        )
    return source


def mvtec_test_pairs(data: Path) -> list[tuple[Path, Path | None]]:
    """(image, mask or None for good) of an MVTec-layout test split (test/<kind>, ground_truth/<kind>), good first."""
    pairs = [(p, None) for p in sorted((data / "test" / "good").glob("*.png"))]
    for folder in sorted(p for p in (data / "test").iterdir() if p.is_dir() and p.name != "good"):
        pairs += [(p, data / "ground_truth" / folder.name / f"{p.stem}_mask.png") for p in sorted(folder.glob("*.png"))]
    return pairs


def separation_metrics(scores, kinds, maps, masks) -> dict:
    """How an anomaly detector separated an MVTec test split (see :func:`mvtec_test_pairs`).

    Args:
        scores: One image score per test image.
        kinds: Its folder under ``test/`` ("good" or the defect type).
        maps, masks: Its anomaly map and boolean mask, at one size each.

    Returns:
        Counts, image AUROC overall and per defect type (each against the good images), pixel
        AUROC and PRO, rounded to 4 places.
    """
    from sklearn.metrics import roc_auc_score

    from common.anomaly_metrics import pixel_auroc, pro_score

    scores, kinds = np.asarray(scores, float), np.asarray(kinds)
    good = kinds == "good"
    per_type = {}
    for kind in sorted(set(kinds) - {"good"}):
        chosen = good | (kinds == kind)
        per_type[kind] = round(float(roc_auc_score(kinds[chosen] == kind, scores[chosen])), 4)
    return {
        "n_good": int(good.sum()),
        "n_defective": int((~good).sum()),
        "image_auroc": round(float(roc_auc_score(~good, scores)), 4),
        "image_auroc_per_type": per_type,
        "pixel_auroc": round(pixel_auroc(maps, masks), 4),
        "pro": round(pro_score(maps, masks), 4),
    }
