"""The Train-tab benchmark's helpers: repeating a job's command from the CLI, and comparing what was learned."""

from __future__ import annotations

import pytest

from bench.train_tab import cli_argv, compare_metrics, parse_args


def test_the_cli_repeats_the_job_command_on_the_original_folder_with_its_own_output():
    job_data = "/jobs/job-3/data/digits"
    command = (
        f"python -m train.classification.train --train_dir {job_data}/train --validation_dir {job_data}/validation "
        "--output_dir /jobs/job-3/model --seed 0 --image_size 96x96"
    )
    argv = cli_argv(command, job_data, "/data/digits", "/runs/digits-1")
    assert argv == [
        "--train_dir", "/data/digits/train", "--validation_dir", "/data/digits/validation",
        "--output_dir", "/runs/digits-1", "--seed", "0", "--image_size", "96x96",
    ]  # fmt: skip


def test_metrics_must_match_except_timings():
    tab = {"test_accuracy": 0.99, "eval_loss": 0.1, "train_runtime": 80.0, "eval_samples_per_second": 50.0}
    cli = {"test_accuracy": 0.99, "eval_loss": 0.1, "train_runtime": 60.0, "eval_samples_per_second": 70.0}
    assert compare_metrics(tab, cli)["match"]
    drifted = compare_metrics(tab, {**cli, "test_accuracy": 0.98, "calibration_ece": 0.02})
    assert not drifted["match"]
    assert drifted["different"] == {"calibration_ece": [None, 0.02], "test_accuracy": [0.99, 0.98]}


def test_bad_flags_are_named(capsys):
    for argv, words in (
        (["--datasets", "cifar"], "--datasets: unknown ['cifar']"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--epochs", "-1"], "--epochs must be positive"),
    ):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert words in capsys.readouterr().err
