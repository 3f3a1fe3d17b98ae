"""bench/train_classification.py: its helpers on fabricated result files, and a short real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import train_classification as bench


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def _fake_run_output(output_dir: Path) -> None:
    """What a finished training leaves behind: 400 images in 10 s, of which 2 s evaluating."""
    _write_json(
        output_dir / "train_results.json",
        {"epoch": 2.0, "train_runtime": 10.0, "train_samples_per_second": 40.0, "train_loss": 0.3},
    )
    _write_json(
        output_dir / "eval_results.json",
        {"eval_accuracy": 0.98, "eval_loss": 0.1, "eval_open_set_other_rejected": 0.9, "eval_temperature": 1.2},
    )
    _write_json(output_dir / "test_results.json", {"test_accuracy": 0.995, "test_loss": 0.05})
    log_history = [
        {"epoch": 1.0, "loss": 0.5, "step": 5},
        {"epoch": 1.0, "eval_accuracy": 0.9, "eval_runtime": 1.25, "step": 5},
        {"epoch": 2.0, "eval_accuracy": 0.98, "eval_runtime": 0.75, "step": 10},
        {"epoch": 2.0, "train_runtime": 10.0, "step": 10},
    ]
    _write_json(output_dir / "trainer_state.json", {"log_history": log_history})


def test_results_files_become_speed_and_accuracy(tmp_path):
    _fake_run_output(tmp_path)
    results = bench.read_results(tmp_path)
    assert results["train_images"] == 400
    assert results["train_images_per_second"] == 40.0
    assert results["eval_during_training_s"] == 2.0
    assert results["train_images_per_second_excluding_eval"] == 50.0  # 400 images / (10 - 2) s
    assert (results["eval_accuracy"], results["test_accuracy"]) == (0.98, 0.995)
    assert results["open_set"] == {"eval_open_set_other_rejected": 0.9}
    assert results["epochs"] == 2.0
    assert results["missing_results"] == []


def test_missing_results_files_are_listed_not_raised(tmp_path):
    _write_json(tmp_path / "train_results.json", {"train_runtime": 5.0, "train_samples_per_second": 8.0})
    results = bench.read_results(tmp_path)
    assert results["missing_results"] == ["eval_results.json", "test_results.json"]
    assert results["test_accuracy"] is None and results["eval_accuracy"] is None
    assert results["train_images"] == 40
    assert results["train_images_per_second_excluding_eval"] is None  # no trainer_state.json to subtract


@pytest.mark.parametrize(
    ("returncode", "test_accuracy", "cpu_s", "met", "reason"),
    [
        (0, 0.995, 300.0, True, None),
        (0, 0.99, 600.0, True, None),  # both limits are inclusive
        (0, 0.985, 300.0, False, "test accuracy 0.9850 < 0.99"),
        (0, 0.995, 601.0, False, "CPU time 601 s > 600 s"),
        (1, None, 12.0, False, "the training failed (return code 1)"),
    ],
)
def test_goal_is_99_percent_within_ten_cpu_minutes(returncode, test_accuracy, cpu_s, met, reason):
    goal = bench.goal_status({"returncode": returncode, "test_accuracy": test_accuracy, "cpu_s": cpu_s})
    assert goal["met"] is met
    assert (reason in goal["missed_because"]) if reason else goal["missed_because"] == []


def test_bf16_comparison_divides_bf16_by_fp32():
    fp32 = {"name": "digits", "train_images_per_second": 40.0, "cpu_s": 300.0, "test_accuracy": 0.99}
    bf16 = {"name": "digits_bf16", "train_images_per_second": 60.0, "cpu_s": 240.0, "test_accuracy": 0.985}
    comparison = bench.bf16_comparison(fp32, bf16, {"avx512_bf16": True, "amx_bf16": False})
    assert comparison["images_per_second_bf16_over_fp32"] == 1.5
    assert comparison["cpu_s_bf16_over_fp32"] == 0.8
    assert comparison["test_accuracy_difference"] == pytest.approx(-0.005)
    # A figure missing on either side (a failed run) gives None, not a division error.
    assert comparison["images_per_second_excluding_eval_bf16_over_fp32"] is None
    assert comparison["eval_accuracy_difference"] is None


def test_cpu_bf16_flags_come_from_the_flags_line():
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\nflags\t\t: amx_bf16\n"
    assert bench.cpu_bf16_flags(cpuinfo) == {"avx512_bf16": True, "amx_bf16": False}
    assert bench.cpu_bf16_flags("") == {"avx512_bf16": False, "amx_bf16": False}


def test_recipe_gets_data_output_and_overrides_without_repeating_flags(tmp_path):
    args = bench.training_args(
        "parts", tmp_path / "parts", tmp_path / "runs" / "parts", epochs=2, max_steps=3, model="default"
    )
    value = dict(zip(args[::2], args[1::2]))
    assert len(value) == len(args) // 2  # every flag once, so the command reads unambiguously
    assert value["--train_dir"] == f"{tmp_path}/parts/train"
    assert value["--test_dir"] == f"{tmp_path}/parts/test"
    assert value["--other_dir"] == f"{tmp_path}/parts/other"
    assert value["--output_dir"] == str(tmp_path / "runs" / "parts")
    assert value["--num_train_epochs"] == "2"
    assert value["--max_steps"] == "3"
    assert value["--overwrite_output_dir"] == "true"
    assert value["--image_size"] == "128x128"
    assert "--bf16" not in value


def test_bf16_run_differs_from_its_twin_only_in_bf16_and_output(tmp_path):
    def flags(args):
        return dict(zip(args[::2], args[1::2]))

    fp32 = flags(bench.training_args("digits", tmp_path / "digits", tmp_path / "fp32_run"))
    bf16 = flags(bench.training_args("digits", tmp_path / "digits", tmp_path / "bf16_run", bf16=True))
    assert {flag for flag in bf16 if bf16[flag] != fp32.get(flag)} == {"--bf16", "--output_dir"}
    assert bf16["--bf16"] == "true" and bf16["--seed"] == fp32["--seed"]


def test_paths_inside_the_repository_are_shown_relative():
    assert bench.display_path(bench.ROOT / "bench" / "results" / "data") == "bench/results/data"
    command = bench.shell_command(["--output_dir", "bench/results/runs/digits"])
    assert command.startswith("HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 ")
    assert command.endswith("-m train.classification.train --output_dir bench/results/runs/digits")


def test_bf16_run_follows_its_fp32_twin():
    assert bench.plan_runs(["digits", "parts"], bf16_compare=True) == [
        ("digits", "digits", False),
        ("digits_bf16", "digits", True),
        ("parts", "parts", False),
    ]
    assert bench.plan_runs(["parts", "digits"], bf16_compare=False) == [
        ("parts", "parts", False),
        ("digits", "digits", False),
    ]


def test_dataset_is_written_once_and_then_reused(tmp_path):
    calls = []

    def write_fake(out, seed):
        calls.append(seed)
        info = {"size": 16, "seed": seed, "counts": {"train": {"a": 3, "b": 2}, "test": {"a": 1, "b": 1}}}
        _write_json(Path(out) / "dataset_info.json", info)
        return info

    first = bench.ensure_dataset("fake", tmp_path, writers={"fake": write_fake})
    second = bench.ensure_dataset("fake", tmp_path, writers={"fake": write_fake})
    assert calls == [bench.SEED]
    assert first["written_now"] and not second["written_now"]
    assert second["images"] == {"train": 5, "test": 2}
    with pytest.raises(ValueError, match="unknown data set 'nope'; choose from fake"):
        bench.ensure_dataset("nope", tmp_path, writers={"fake": write_fake})


def test_previous_checkpoints_and_results_are_cleared_but_the_model_stays(tmp_path):
    _fake_run_output(tmp_path)
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "model.safetensors").write_bytes(b"old")
    (tmp_path / "model.safetensors").write_bytes(b"final")
    bench.clear_previous_run(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.safetensors", "trainer_state.json"]
    bench.clear_previous_run(tmp_path / "never-run")  # nothing to clear is fine


def test_a_failed_training_keeps_its_return_code_and_stderr(tmp_path, monkeypatch):
    # json.tool stands in for the training module: it starts in milliseconds and fails clearly.
    monkeypatch.setattr(bench, "TRAIN_MODULE", "json.tool")
    measured = bench.run_training([str(tmp_path / "missing.json")], tmp_path / "logs" / "broken")
    assert measured["returncode"] != 0
    assert measured["error"]["returncode"] == measured["returncode"]
    assert "missing.json" in measured["error"]["stderr_tail"]
    assert not measured["error"]["timed_out"]
    assert measured["wall_s"] >= 0 and measured["cpu_s"] >= 0
    assert Path(tmp_path / "logs" / "broken.stderr.log").is_file()
    line = bench.run_line({"name": "broken", **measured})
    assert line.startswith(f"FAILED (exit code {measured['returncode']})")


def test_a_training_that_runs_too_long_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "TRAIN_MODULE", "timeit")
    measured = bench.run_training(["-n", "1", "import time; time.sleep(30)"], tmp_path / "slow", timeout_s=0.5)
    assert measured["returncode"] is None
    assert measured["error"]["timed_out"]
    assert measured["wall_s"] < 30


def test_arguments_are_checked_by_flag():
    assert bench.parse_args([]).bf16_compare is True  # digits runs by default, so does its bf16 twin
    assert bench.parse_args(["--datasets", "parts"]).bf16_compare is False
    assert bench.parse_args(["--datasets", "parts,digits,parts"]).datasets == ["parts", "digits"]
    for bad in (["--datasets", "parts", "--bf16-compare"], ["--datasets", "mnist"], ["--max-steps", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


@pytest.mark.slow
def test_short_benchmark_trains_reports_and_leaves_loadable_checkpoints(tiny_vit_dir, tmp_path, capsys):
    from datagen.digits import write_digits
    from datagen.parts import write_parts
    from pipelines.classification import ImageClassifier

    data_root, runs_dir, out = tmp_path / "data", tmp_path / "runs", tmp_path / "report.json"
    # Small images and a handful of parts keep the two trainings to seconds each.
    write_digits(data_root / "digits", size=32)
    write_parts(data_root / "parts", size=32, n_per_class=6)
    argv = [
        "--datasets", "digits,parts",
        "--no-bf16-compare",
        "--model", str(tiny_vit_dir),
        "--image-size", "32x32",  # the tiny ViT's position embeddings are for 32x32
        "--max-steps", "2",
        "--data-root", str(data_root),
        "--runs-dir", str(runs_dir),
        "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    assert json.loads(captured.out) == report
    assert not any(data["written_now"] for data in report["data"].values())  # reused, not rewritten
    assert list(report["runs"]) == ["digits", "parts"]
    for name, run in report["runs"].items():
        assert run["returncode"] == 0, run.get("error")
        assert run["wall_s"] > 0 and run["cpu_s"] > 0
        assert run["train_images"] == 2 * 32  # two steps of the recipes' batch of 32
        assert 0 <= run["test_accuracy"] <= 1 and 0 <= run["eval_accuracy"] <= 1
        assert f"--model_name_or_path {tiny_vit_dir}" in run["command"] and "--max_steps 2" in run["command"]
        assert f"--output_dir {runs_dir / name}" in run["command"]
    assert "eval_open_set_other_rejected" in report["runs"]["parts"]["open_set"]
    assert report["runs"]["digits"]["goal"]["met"] is False  # two steps cannot read digits
    assert report["runs"]["parts"]["goal"] is None
    assert report["bf16_comparison"] is None
    assert {"cpu_model", "torch_threads", "versions"} <= set(report["machine"])
    classifier = ImageClassifier.from_pretrained(runs_dir / "digits")
    assert sorted(classifier.id2label.values()) == [str(digit) for digit in range(10)]
    assert "goal NOT met" in captured.err
