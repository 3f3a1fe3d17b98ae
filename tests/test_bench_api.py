"""The REST API benchmark's pure logic: CPU flags, ratios and the goal, the summary, its flags."""

from __future__ import annotations

import pytest

from bench import api
from common.onnx_network import cpu_flags

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f
processor\t: 1
flags\t\t: fpu
"""
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve\nCPU implementer\t: 0x41\n"


def stats(median: float) -> dict:
    return {"median_ms": median, "p95_ms": median * 1.2, "n": 10}


def test_cpu_flags_come_from_the_first_processor_on_x86_and_arm():
    assert cpu_flags(X86_CPUINFO)[-3:] == ["f16c", "avx2", "avx512f"]
    assert cpu_flags(ARM_CPUINFO) == ["fp", "asimd", "evtstrm", "aes", "sve"]
    assert cpu_flags("processor\t: 0\n") == []


def test_inference_flags_keep_their_documented_order_and_drop_the_rest():
    assert api.inference_flags(cpu_flags(X86_CPUINFO)) == ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f"]
    assert api.inference_flags(["fpu", "sse"]) == []


def test_goal_is_met_at_one_and_a_half_times_the_pipeline_and_missed_above():
    latency = {"pipeline_end_to_end": stats(80.0), "rest_request": stats(120.0), "gradio_request": stats(320.0)}
    ratios, goals = api.goal_report(latency)
    assert ratios == {"rest_request_over_pipeline": 1.5, "gradio_request_over_pipeline": 4.0}
    assert goals["rest_within_1.5x_of_pipeline"] == {"ratio": 1.5, "target": "<= 1.5", "met": True}
    latency["rest_request"] = stats(121.0)
    assert api.goal_report(latency)[1]["rest_within_1.5x_of_pipeline"]["met"] is False


def test_a_rest_median_equal_to_the_pipelines_still_gets_its_ratio():
    ratios, _ = api.goal_report({"pipeline_end_to_end": stats(50.0), "rest_request": stats(50.0)})
    assert ratios == {"rest_request_over_pipeline": 1.0}


def test_summary_names_the_cpu_its_flags_every_variant_and_the_verdict():
    latency = {"pipeline_end_to_end": stats(80.0), "rest_request": stats(200.0)}
    ratios, goals = api.goal_report(latency)
    report = {
        "machine": {"cores_usable": 2, "torch_threads": 2, "cpu_model": "AMD EPYC 7B13"},
        "cpu_inference_flags": ["avx2", "fma"],
        "latency": latency,
        "ratios": ratios,
        "goals": goals,
    }
    text = api.summary_text(report)
    assert "CPU: AMD EPYC 7B13" in text and "avx2 fma" in text
    assert "pipeline_end_to_end" in text and "rest_request" in text
    assert "ratio 2.500 (target <= 1.5) -> NOT met" in text


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--warmup", "-1"]])
def test_bad_round_counts_are_refused_by_name(argv, capsys):
    with pytest.raises(SystemExit):
        api.parse_args(argv)
    assert argv[0] in capsys.readouterr().err


def test_the_log_cost_is_the_logged_rest_median_against_the_log_off_one():
    latency = {"pipeline_end_to_end": stats(80.0), "rest_request": stats(100.0), "rest_request_logged": stats(104.0)}
    assert api.log_cost(latency) == {
        "rest_logged_median_ms": 104.0,
        "rest_log_off_median_ms": 100.0,
        "added_ms": 4.0,
        "ratio": 1.04,
    }
    assert api.log_cost({"pipeline_end_to_end": stats(80.0), "rest_request": stats(100.0)}) is None
    ratios, goals = api.goal_report(latency)
    report = {
        "machine": {"cores_usable": 2, "torch_threads": 2, "cpu_model": "AMD EPYC 7B13"},
        "cpu_inference_flags": [],
        "latency": latency,
        "ratios": ratios,
        "log_cost": api.log_cost(latency),
        "goals": goals,
    }
    assert "inspection log (SQLite): +4.00 ms per REST request, logged/off ratio 1.040" in api.summary_text(report)
