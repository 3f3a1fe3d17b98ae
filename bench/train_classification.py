"""How fast and how well ``train.classification.train`` fine-tunes the default model on this CPU.

For each data set (``digits``: real handwritten scans; ``parts``: generated machine parts with
non-part images for open-set rejection) this writes the data once under ``--data-root``, then
runs one training as a subprocess and reports:

* wall time and the child's CPU time (user + system, from ``getrusage(RUSAGE_CHILDREN)``);
* training images per second, as the Trainer counts them and without its per-epoch evaluations;
* validation and test accuracy, and for ``parts`` the open-set rejection rates;
* for ``digits``, whether the issue's goal is met: test accuracy >= 99% within 10 CPU minutes.

With ``--bf16-compare`` (the default when ``digits`` is run) digits is trained again with
``--bf16 true`` and the same seed, right after the fp32 run so that both see a similar load on a
shared machine, and the speed ratio and accuracy difference are reported. A run that fails is
recorded with its return code and the end of its stderr; the others still run. A missed goal is
reported, not raised: this is a measurement, not a test.

    python -m bench.train_classification [--datasets digits,parts] [--no-bf16-compare]
        [--epochs N] [--max-steps N] [--out PATH] [--data-root DIR] [--runs-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bench.common import RESULTS, log_tail, machine_info, publish_report
from common.checkpoint_files import (
    ALL_RESULTS_FILE,
    EVAL_RESULTS_FILE,
    TEST_RESULTS_FILE,
    TRAIN_RESULTS_FILE,
    TRAINER_STATE_FILE,
)
from datagen.arguments import INFO_NAME

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = RESULTS / "train_classification.json"
DEFAULT_DATA_ROOT = RESULTS / "data"
DEFAULT_RUNS_DIR = RESULTS / "runs"
TRAIN_MODULE = "train.classification.train"
DATA_PLACEHOLDER = "{data}"  # replaced by the data set's folder in every recipe flag
SEED = 0  # passed explicitly so the fp32 and bf16 runs provably share it
STDERR_TAIL_LINES = 30

# The issue's goal for digits.
GOAL_TEST_ACCURACY = 0.99
GOAL_CPU_S = 600.0

# One recipe per data set: the flags of `python -m train.classification.train` besides the
# data folders, output folder and seed, which training_args adds. Progress bars are off because
# the output goes to log files.
RECIPES: dict[str, list[str]] = {
    # Handwritten digits are 8x8 scans: 96 px keeps the strokes several pixels wide for the
    # ImageNet model at a fifth of the pixels of 224. Flips turn a 2 into a mirrored glyph and
    # strong crops or rotations cut off or turn a 6 into a 9, so augmentation stays mild; the
    # short warmup keeps the fresh 10-class head from wrecking the pretrained features at 1e-3.
    # Eight epochs over the 1,257 training images: five reached 97.4-99.6% test accuracy
    # depending on run (numerics), ten reached 99.6%; eight keeps inside 10 CPU-minutes.
    "digits": [
        "--model_name_or_path", "default",
        "--image_size", "96x96",
        "--augment_hflip", "false",
        "--augment_scale_min", "0.8",
        "--augment_rotation", "10",
        "--augment_color_jitter", "0.1",
        "--learning_rate", "1e-3",
        "--per_device_train_batch_size", "32",
        "--num_train_epochs", "8",
        "--warmup_steps", "20",
        "--disable_tqdm", "true",
    ],
    # Parts are drawn at 128 px with fine detail (gear teeth, spring coils), so no downscale;
    # the script's default augmentation (flips, crops, rotation, colour) suits objects lying in
    # any pose. other/ holds non-part images that fit and then measure the rejection threshold.
    "parts": [
        "--model_name_or_path", "default",
        "--image_size", "128x128",
        "--learning_rate", "1e-3",
        "--per_device_train_batch_size", "32",
        "--num_train_epochs", "4",
        "--other_dir", f"{DATA_PLACEHOLDER}/other",
        "--disable_tqdm", "true",
    ],
}  # fmt: skip
BF16_DATASET = "digits"
# The children inherit these: the default model and the data are local, and a Hub lookup's
# network timeout would otherwise land in the measured time.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# ---------------------------------------------------------------------------------------------
# Planning: data sets and commands.
# ---------------------------------------------------------------------------------------------


def ensure_dataset(name: str, root: Path, writers: Mapping[str, Callable[..., dict]] | None = None) -> dict:
    """Write data set ``name`` to ``root/name`` unless a complete copy is already there.

    Writers save ``dataset_info.json`` last, so its presence means an earlier write finished;
    a half-written folder is simply written again (the same seed gives the same files).

    Returns:
        Where the data is, whether it was written now and how long that took, image counts
        per split, and the writer's size and version.
    """
    if writers is None:
        from datagen import GENERATORS

        writers = GENERATORS
    if name not in writers:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(sorted(writers))}")
    folder = Path(root) / name
    info_path = folder / INFO_NAME
    written_now, seconds = False, 0.0
    if not info_path.is_file():
        started = time.perf_counter()
        writers[name](folder, seed=SEED)
        written_now, seconds = True, time.perf_counter() - started
    info = json.loads(info_path.read_text())
    return {
        "path": display_path(folder),
        "written_now": written_now,
        "write_s": round(seconds, 1),
        "images": {split: sum(counts.values()) for split, counts in info.get("counts", {}).items()},
        "other_images": info.get("other_counts"),
        "image_size": info.get("size"),
        "seed": info.get("seed"),
        "generator_version": info.get("generator_version"),
    }


def set_flag(args: Sequence[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced, or the pair appended when ``flag`` is absent."""
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
        return args
    return [*args, flag, value]


def training_args(
    dataset: str,
    data_dir: Path,
    output_dir: Path,
    *,
    bf16: bool = False,
    epochs: float | None = None,
    max_steps: int | None = None,
    model: str | None = None,
    image_size: str | None = None,
) -> list[str]:
    """The flags of one training: the recipe, with the data, output and any overrides filled in."""
    data = display_path(data_dir)
    args = [arg.replace(DATA_PLACEHOLDER, data) for arg in RECIPES[dataset]]
    args += [
        "--train_dir", f"{data}/train",
        "--validation_dir", f"{data}/validation",
        "--test_dir", f"{data}/test",
        "--output_dir", display_path(output_dir),
        "--overwrite_output_dir", "true",
        "--seed", str(SEED),
    ]  # fmt: skip
    if model is not None and Path(model).exists():
        model = display_path(model)  # the child runs at the repository root
    overrides = {
        "--model_name_or_path": model,
        "--image_size": image_size,
        "--num_train_epochs": None if epochs is None else f"{epochs:g}",
        "--max_steps": None if max_steps is None else str(max_steps),
        "--bf16": "true" if bf16 else None,
    }
    for flag, value in overrides.items():
        if value is not None:
            args = set_flag(args, flag, value)
    return args


def display_path(path: Path | str) -> str:
    """``path`` relative to the repository root when it is inside it, else absolute."""
    # abspath, not resolve(): the venv's python is a symlink, and its target is the base
    # interpreter, which does not see the venv's packages.
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def shell_command(args: Sequence[str]) -> str:
    """The command line of a training, pastable into a shell at the repository root."""
    env = " ".join(f"{key}={value}" for key, value in OFFLINE_ENV.items())
    return f"{env} {shlex.join([display_path(sys.executable), '-m', TRAIN_MODULE, *args])}"


def plan_runs(datasets: Sequence[str], bf16_compare: bool) -> list[tuple[str, str, bool]]:
    """``(run name, data set, bf16)`` in running order; the bf16 run follows its fp32 twin."""
    runs = []
    for dataset in datasets:
        runs.append((dataset, dataset, False))
        if bf16_compare and dataset == BF16_DATASET:
            runs.append((f"{dataset}_bf16", dataset, True))
    return runs


def clear_previous_run(output_dir: Path) -> None:
    """Remove the checkpoints and result files an earlier run left in ``output_dir``.

    ``--overwrite_output_dir`` only allows replacing a finished model: with a ``checkpoint-*``
    folder present the training script resumes from it, and a rerun would time a training
    that is already over. Old result files would be read as this run's if it failed early.
    """
    if not output_dir.is_dir():
        return
    for checkpoint in output_dir.glob("checkpoint-*"):
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint)
    for name in (TRAIN_RESULTS_FILE, EVAL_RESULTS_FILE, TEST_RESULTS_FILE, ALL_RESULTS_FILE):
        (output_dir / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Measuring one training.
# ---------------------------------------------------------------------------------------------


def children_cpu_s() -> float:
    """User + system CPU seconds of every child process that has ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_training(args: Sequence[str], log_prefix: Path, timeout_s: float | None = None) -> dict:
    """Run one training as a subprocess at the repository root; time it and keep its logs.

    CPU time is the change in ``RUSAGE_CHILDREN`` across the run, so it covers the whole
    child (start-up, data loading, training, evaluation, the report) and any workers it
    waited for, and nothing of this process.
    """
    stdout_path = log_prefix.with_name(log_prefix.name + ".stdout.log")
    stderr_path = log_prefix.with_name(log_prefix.name + ".stderr.log")
    stdout_path.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cpu_before = children_cpu_s()
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        started = time.perf_counter()
        try:
            returncode = subprocess.run(
                [sys.executable, "-m", TRAIN_MODULE, *args],
                cwd=ROOT,
                env={**os.environ, **OFFLINE_ENV},
                stdout=stdout,
                stderr=stderr,
                timeout=timeout_s,
                check=False,
            ).returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            returncode, timed_out = None, True  # run() has killed and reaped the child
        wall_s = time.perf_counter() - started
    cpu_s = children_cpu_s() - cpu_before
    measured = {
        "returncode": returncode,
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "cpu_min": round(cpu_s / 60, 2),
        "load_average_1m_before": load_before,
        "stdout_log": display_path(stdout_path),
        "stderr_log": display_path(stderr_path),
    }
    if returncode != 0:
        measured["error"] = {
            "returncode": returncode,
            "timed_out": timed_out,
            "stderr_tail": log_tail(stderr_path, STDERR_TAIL_LINES),
        }
    return measured


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def read_results(output_dir: Path) -> dict:
    """Speed and accuracy from the files a training writes into its output directory.

    The Trainer's ``train_samples_per_second`` divides all images seen by ``train_runtime``,
    which also covers the evaluation after every epoch and checkpoint saving; subtracting the
    evaluations (``eval_runtime`` in ``trainer_state.json``) gives a figure closer to the pure
    forward + backward speed. Missing files leave their figures ``None`` and are listed.
    """
    output_dir = Path(output_dir)
    train = _read_json(output_dir / TRAIN_RESULTS_FILE)
    evaluation = _read_json(output_dir / EVAL_RESULTS_FILE)
    test = _read_json(output_dir / TEST_RESULTS_FILE)
    state = _read_json(output_dir / TRAINER_STATE_FILE)
    missing = [
        name
        for name, content in (
            (TRAIN_RESULTS_FILE, train),
            (EVAL_RESULTS_FILE, evaluation),
            (TEST_RESULTS_FILE, test),
        )
        if content is None
    ]
    results = {
        "train_runtime_s": None,
        "train_images": None,
        "train_images_per_second": None,
        "eval_during_training_s": None,
        "train_images_per_second_excluding_eval": None,
        "epochs": None,
        "eval_accuracy": None if evaluation is None else evaluation.get("eval_accuracy"),
        "test_accuracy": None if test is None else test.get("test_accuracy"),
        "open_set": {
            key: value for part in (evaluation, test) if part for key, value in part.items() if "open_set" in key
        },
        "missing_results": missing,
    }
    if train is not None:
        runtime, per_second = train.get("train_runtime"), train.get("train_samples_per_second")
        results.update(train_runtime_s=runtime, train_images_per_second=per_second, epochs=train.get("epoch"))
        if runtime and per_second:
            images = round(runtime * per_second)
            results["train_images"] = images
            if state is not None:
                eval_s = sum(entry.get("eval_runtime", 0.0) for entry in state.get("log_history", []))
                results["eval_during_training_s"] = round(eval_s, 2)
                if runtime > eval_s:
                    results["train_images_per_second_excluding_eval"] = round(images / (runtime - eval_s), 2)
    return results


def goal_status(run: Mapping) -> dict:
    """Whether a run reached the issue's goal: test accuracy >= 99% within 10 CPU minutes."""
    accuracy, cpu_s = run.get("test_accuracy"), run.get("cpu_s")
    reasons = []
    if run.get("returncode") != 0:
        reasons.append(f"the training failed (return code {run.get('returncode')})")
    if accuracy is None:
        reasons.append("no test accuracy")
    elif accuracy < GOAL_TEST_ACCURACY:
        reasons.append(f"test accuracy {accuracy:.4f} < {GOAL_TEST_ACCURACY}")
    if cpu_s is None:
        reasons.append("no CPU time")
    elif cpu_s > GOAL_CPU_S:
        reasons.append(f"CPU time {cpu_s:.0f} s > {GOAL_CPU_S:.0f} s")
    return {
        "test_accuracy_at_least": GOAL_TEST_ACCURACY,
        "cpu_s_at_most": GOAL_CPU_S,
        "met": not reasons,
        "missed_because": reasons,
    }


def bf16_comparison(fp32: Mapping, bf16: Mapping, cpu_flags: Mapping[str, bool]) -> dict:
    """bf16 against fp32 on the same data and seed: ratios bf16 / fp32 and accuracy differences bf16 - fp32.

    An images-per-second ratio above 1 means bf16 trains faster; a CPU-time ratio below 1
    means it costs less CPU time.
    """

    def ratio(key: str) -> float | None:
        a, b = fp32.get(key), bf16.get(key)
        return None if not a or not b else round(b / a, 3)

    def difference(key: str) -> float | None:
        a, b = fp32.get(key), bf16.get(key)
        return None if a is None or b is None else round(b - a, 4)

    return {
        "fp32_run": fp32.get("name"),
        "bf16_run": bf16.get("name"),
        "images_per_second_bf16_over_fp32": ratio("train_images_per_second"),
        "images_per_second_excluding_eval_bf16_over_fp32": ratio("train_images_per_second_excluding_eval"),
        "cpu_s_bf16_over_fp32": ratio("cpu_s"),
        "test_accuracy_difference": difference("test_accuracy"),
        "eval_accuracy_difference": difference("eval_accuracy"),
        "cpu_bf16_instructions": dict(cpu_flags),
    }


def cpu_bf16_flags(cpuinfo_text: str) -> dict[str, bool]:
    """Which bf16 instruction sets the CPU advertises; without them bf16 matmuls are emulated."""
    flags: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            break
    return {name: name in flags for name in ("avx512_bf16", "amx_bf16")}


def _read_cpu_bf16_flags() -> dict[str, bool]:
    try:
        return cpu_bf16_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return {}


# ---------------------------------------------------------------------------------------------
# The benchmark.
# ---------------------------------------------------------------------------------------------


def prepare_default_model() -> float:
    """Build the default checkpoint into its cache now, so its one-off conversion is not timed."""
    from common.default_model import default_checkpoint_dir

    started = time.perf_counter()
    default_checkpoint_dir()
    return round(time.perf_counter() - started, 1)


def run_benchmark(
    datasets: Sequence[str],
    bf16_compare: bool,
    data_root: Path,
    runs_dir: Path,
    *,
    epochs: float | None = None,
    max_steps: int | None = None,
    model: str | None = None,
    image_size: str | None = None,
    timeout_s: float | None = None,
) -> dict:
    """Write the data, run every training and return the report (a JSON-ready dict)."""
    machine = machine_info()  # first, so the load average is the one before we add to it
    cpu_flags = _read_cpu_bf16_flags()
    data = {name: ensure_dataset(name, data_root) for name in datasets}
    default_model_s = prepare_default_model() if (model or "default") == "default" else None
    runs: dict[str, dict] = {}
    for name, dataset, bf16 in plan_runs(datasets, bf16_compare):
        output_dir = Path(runs_dir) / name
        args = training_args(
            dataset,
            Path(data_root) / dataset,
            output_dir,
            bf16=bf16,
            epochs=epochs,
            max_steps=max_steps,
            model=model,
            image_size=image_size,
        )
        print(f"[{name}] {shell_command(args)}", file=sys.stderr, flush=True)
        clear_previous_run(output_dir)
        measured = run_training(args, Path(runs_dir) / name, timeout_s)
        run = {"name": name, "dataset": dataset, "bf16": bf16, "command": shell_command(args)}
        run.update(measured)
        run["output_dir"] = display_path(output_dir)
        run.update(read_results(output_dir))
        run["goal"] = goal_status(run) if dataset == BF16_DATASET else None
        runs[name] = run
        print(f"[{name}] {run_line(run)}", file=sys.stderr, flush=True)
    comparison = None
    if BF16_DATASET in runs and f"{BF16_DATASET}_bf16" in runs:
        comparison = bf16_comparison(runs[BF16_DATASET], runs[f"{BF16_DATASET}_bf16"], cpu_flags)
    return {
        "benchmark": "train_classification",
        "settings": {
            "datasets": list(datasets),
            "bf16_compare": bf16_compare,
            "epochs_override": epochs,
            "max_steps": max_steps,
            "model_override": model,
            "image_size_override": image_size,
            "seed": SEED,
            "timeout_s": timeout_s,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cwd": str(ROOT),
        },
        "machine": machine,
        "data": data,
        "default_model_prepare_s": default_model_s,
        "runs": runs,
        "bf16_comparison": comparison,
    }


def _format(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def run_line(run: Mapping) -> str:
    """One line per run: time, speed, accuracy and, for digits, the goal."""
    if run.get("returncode") != 0:
        error = run.get("error", {})
        how = "timed out" if error.get("timed_out") else f"exit code {run.get('returncode')}"
        return f"FAILED ({how}) after {run['wall_s']:.0f} s; see {run['stderr_log']}"
    parts = [
        f"wall {run['wall_s']:.0f} s, CPU {run['cpu_min']:.2f} min",
        f"train {_format(run.get('train_images_per_second'), '.1f')} img/s "
        f"({_format(run.get('train_images_per_second_excluding_eval'), '.1f')} without evaluation)",
        f"eval acc {_format(run.get('eval_accuracy'), '.4f')}, test acc {_format(run.get('test_accuracy'), '.4f')}",
    ]
    open_set = run.get("open_set") or {}
    if "eval_open_set_other_rejected" in open_set:
        parts.append(
            f"open set: other rejected {open_set['eval_open_set_other_rejected']:.3f}, "
            f"known accepted {open_set.get('eval_open_set_known_accepted', float('nan')):.3f}"
        )
    goal = run.get("goal")
    if goal is not None:
        parts.append("goal met" if goal["met"] else f"goal NOT met ({'; '.join(goal['missed_because'])})")
    return "; ".join(parts)


def summary_text(report: Mapping) -> str:
    """A few lines for people: machine, one line per run, the bf16 comparison."""
    machine = report["machine"]
    lines = [
        f"train_classification bench: {machine['cpu_model']}, {machine['cores_usable']} usable cores, "
        f"{machine['torch_threads']} torch threads, load {_format(machine['load_average_1m_at_start'], '.2f')} at start"
    ]
    lines += [f"  {name:<12} {run_line(run)}" for name, run in report["runs"].items()]
    comparison = report.get("bf16_comparison")
    if comparison is not None:
        flags = comparison["cpu_bf16_instructions"]
        lines.append(
            f"  bf16 / fp32 ({comparison['bf16_run']} / {comparison['fp32_run']}): "
            f"images/s x{_format(comparison['images_per_second_bf16_over_fp32'], '.2f')} "
            f"(x{_format(comparison['images_per_second_excluding_eval_bf16_over_fp32'], '.2f')} without evaluation), "
            f"CPU time x{_format(comparison['cpu_s_bf16_over_fp32'], '.2f')}, "
            f"test accuracy {_format(comparison['test_accuracy_difference'], '+.4f')}; CPU bf16 instructions: "
            + (", ".join(f"{name} {'yes' if present else 'no'}" for name, present in flags.items()) or "unknown")
        )
    return "\n".join(lines)


def _dataset_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in RECIPES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of {', '.join(RECIPES)} (unknown: {', '.join(unknown) or 'none'})"
        )
    return list(dict.fromkeys(names))  # drop repeats, keep the order


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train_classification",
        description="Fine-tune the default model on generated data sets on this CPU; report time, speed and "
        "accuracy as JSON.",
    )
    parser.add_argument("--datasets", type=_dataset_list, default=list(RECIPES), help=f"default {','.join(RECIPES)}")
    parser.add_argument(
        "--bf16-compare",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"also train {BF16_DATASET} with --bf16 true (default: on when {BF16_DATASET} is run)",
    )
    parser.add_argument("--epochs", type=float, default=None, help="override every recipe's --num_train_epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each training after N steps (smoke runs)")
    parser.add_argument(
        "--model", default=None, help="override the recipes' model (a checkpoint directory), e.g. a tiny test model"
    )
    parser.add_argument(
        "--image-size", default=None, help="override the recipes' --image_size (HEIGHTxWIDTH), e.g. for --model"
    )
    parser.add_argument("--timeout-min", type=float, default=60.0, help="stop a training after this long (default 60)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output path (default {DEFAULT_OUT})")
    parser.add_argument(
        "--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="where data sets are written once and reused"
    )
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="parent of each run's output dir")
    args = parser.parse_args(argv)
    if args.bf16_compare and BF16_DATASET not in args.datasets:
        parser.error(f"--bf16-compare retrains {BF16_DATASET}; add it to --datasets or pass --no-bf16-compare")
    if args.bf16_compare is None:
        args.bf16_compare = BF16_DATASET in args.datasets
    for flag, value in (
        ("--epochs", args.epochs),
        ("--max-steps", args.max_steps),
        ("--timeout-min", args.timeout_min),
    ):
        if value is not None and value <= 0:
            parser.error(f"{flag} must be positive, got {value}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the benchmark, write the JSON file, print it, summarise on stderr."""
    args = parse_args(argv)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    report = run_benchmark(
        args.datasets,
        args.bf16_compare,
        args.data_root,
        args.runs_dir,
        epochs=args.epochs,
        max_steps=args.max_steps,
        model=args.model,
        image_size=args.image_size,
        timeout_s=args.timeout_min * 60,
    )
    publish_report(report, args.out, summary_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
