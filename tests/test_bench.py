"""The benchmark's helpers, and a short run of its in-process part on the real default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import classification
from bench.common import (
    AppStartError,
    cpu_model,
    free_port,
    latency_stats,
    process_peak_rss_mb,
    stop_process,
    time_round_robin,
    vm_hwm_bytes,
    wait_for_http,
)
from pipelines.examples import example_photos


def test_latency_stats_on_known_samples():
    stats = latency_stats(list(range(100, 0, -1)))  # 1..100, deliberately not sorted
    assert stats["median_ms"] == 50.5
    assert stats["p95_ms"] == pytest.approx(95.05)  # linear between the 95th and 96th values
    assert stats["n"] == 100


def test_one_slow_sample_in_twenty_one_moves_neither_median_nor_p95():
    stats = latency_stats([10.0] * 20 + [1000.0])
    assert stats == {"median_ms": 10.0, "p95_ms": 10.0, "n": 21}


def test_latency_stats_refuses_no_samples():
    with pytest.raises(ValueError, match="at least one sample"):
        latency_stats([])


def test_round_robin_interleaves_and_discards_warmup():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    samples = time_round_robin(variants, rounds=3, warmup=2)
    assert calls == ["a", "b", "c"] * 5
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_round_robin_times_each_variant_in_milliseconds():
    samples = time_round_robin({"nothing": lambda: None, "sleep": lambda: time.sleep(0.02)}, rounds=2)
    assert all(value >= 20 for value in samples["sleep"])  # sleep never returns early
    assert max(samples["nothing"]) < min(samples["sleep"])


def test_round_robin_refuses_zero_rounds():
    with pytest.raises(ValueError, match="rounds must be at least 1, got 0"):
        time_round_robin({"a": lambda: None}, rounds=0)


def test_vm_hwm_is_read_from_proc_status_text():
    status = "Name:\tpython\nVmPeak:\t 2000 kB\nVmHWM:\t  942864 kB\nVmRSS:\t  900000 kB\n"
    assert vm_hwm_bytes(status) == 942864 * 1024
    assert vm_hwm_bytes("Name:\tkthreadd\n") is None


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_rss_of_a_live_process_is_the_kernel_high_water_mark():
    import psutil

    rss_before_mb = psutil.Process().memory_info().rss / 2**20  # read first: the peak can only grow after
    peak_mb, source = process_peak_rss_mb(os.getpid())
    assert source == "VmHWM"
    assert peak_mb >= rss_before_mb > 0


def test_cpu_model_is_the_first_model_name():
    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\nmodel name\t: other\n"
    assert cpu_model(text) == "AMD EPYC 7B13"
    assert cpu_model("processor\t: 0\n") is None


def test_waiting_for_a_server_that_crashed_shows_its_log(tmp_path):
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "print('boom: no model'); raise SystemExit(3)"], stdout=log, stderr=log
        )
    with pytest.raises(AppStartError, match=r"(?s)exited with code 3.*boom: no model"):
        wait_for_http(f"http://127.0.0.1:{free_port()}/", process, timeout_s=30, log_path=log_path)


def test_waiting_for_a_live_server_returns_and_stop_ends_it(tmp_path):
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
            stdout=log,
            stderr=log,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", process, timeout_s=30, log_path=log_path)
        assert process.poll() is None
    finally:
        stop_process(process)
    assert process.poll() is not None


@pytest.mark.parametrize(
    ("pipeline_ms", "within_1_3x", "faster_than_transformers"),
    [(12.0, True, True), (14.0, False, True), (20.0, False, False)],
)
def test_goals_compare_medians(pipeline_ms, within_1_3x, faster_than_transformers):
    latency = {
        "raw_forward": {"median_ms": 10.0},
        "pipeline_end_to_end": {"median_ms": pipeline_ms},
        "transformers_pipeline": {"median_ms": 20.0},
    }
    ratios, goals = classification.overhead_report(latency)
    assert ratios["pipeline_over_raw_forward"] == pytest.approx(pipeline_ms / 10)
    assert ratios["pipeline_over_transformers_pipeline"] == pytest.approx(pipeline_ms / 20)
    assert goals["pipeline_within_1.3x_of_raw_forward"]["met"] is within_1_3x
    assert goals["pipeline_faster_than_transformers_pipeline"]["met"] is faster_than_transformers


def test_bad_repeats_is_refused_by_flag():
    with pytest.raises(SystemExit):
        classification.parse_args(["--repeats", "0"])


def _numbers(value):
    """Every int or float inside nested dicts and lists (booleans are not measurements)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.slow
def test_in_process_benchmark_writes_and_prints_the_report(tmp_path, capsys):
    out = tmp_path / "results" / "classification.json"
    assert classification.main(["--no-app", "--repeats", "2", "--warmup", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    assert json.loads(captured.out) == report
    assert set(report["latency"]) == {"raw_forward", "pipeline_end_to_end", "transformers_pipeline"}
    assert all(stats["n"] == 2 for stats in report["latency"].values())
    assert set(report["ratios"]) == {"pipeline_over_raw_forward", "pipeline_over_transformers_pipeline"}
    measured = [report["latency"], report["ratios"], report["bench_process"], report["settings"]["rounds"]]
    assert all(number > 0 for number in _numbers(measured))
    assert report["app"] is None
    coffee_labels = next(labels for path, labels in example_photos().items() if path.name == "coffee.png")
    assert set(report["image"]["top1"].values()) <= set(coffee_labels)  # same answer from both pipelines
    assert {"cpu_model", "torch_threads", "versions", "python", "date", "openblas_coretype_set"} <= set(
        report["machine"]
    )
    assert "pipeline_within_1.3x_of_raw_forward" in captured.err
