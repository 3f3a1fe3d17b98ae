"""A training started from the app's Train tab against the same training from the CLI: time and results.

For each data set (``digits``, ``parts``) this writes the data once, zips it the way a user would
(one top folder), starts ``app.py`` as a separate process and trains through the Train tab's own
endpoint (``/train_start``, what the Start button calls, via ``gradio_client``), polling
``/train_status`` until the job ends. Then it runs the job's own command line (``status["command"]``)
with the data folder instead of the job's copy of the zip and another output folder, as a terminal
user repeating the run would, and compares:

* wall time of the job (process start to exit, as the tab reports it) and of the CLI run;
* every saved metric (validation, test, calibration), which must be equal: the same data, flags
  and seed on the same machine give the same model.

``--rounds`` pairs are run per data set, the order alternating (tab then CLI, then CLI then tab),
so that a slower or busier stretch of a shared machine does not always fall on the same side; the
ratio is of the medians.

The recipes are those of ``bench/train_classification.py`` set through the tab's controls (epochs,
image size, learning rate, augmentation; the rest in the Advanced box). A measurement, not a test.

    python -m bench.train_tab [--datasets digits,parts] [--epochs N] [--rounds 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from bench.common import RESULTS, free_port, machine_info, publish_report, stop_process, wait_for_http
from common.checkpoint_files import ALL_RESULTS_FILE
from common.onnx_network import read_cpu_flags
from datagen.arguments import INFO_NAME

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = RESULTS / "train_tab.json"
WORK = RESULTS / "train_tab"
SEED = 0
# The Train tab's controls for each data set: the bench-train recipes (bench/train_classification.py).
RECIPES = {
    "digits": {
        "image_size": "96x96",
        "learning_rate": 1e-3,
        "epochs": 8,
        "augmentation": "light",  # scale 0.8, rotation 10, colour 0.1: the digits recipe
        "advanced": "--augment_hflip false --warmup_steps 20",
    },
    "parts": {"image_size": "128x128", "learning_rate": 1e-3, "epochs": 4, "augmentation": "standard", "advanced": ""},
}
# The flags that decide PyTorch's CPU kernels, printed beside the times.
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
# Differ between any two runs: how long things took, not what was learned.
TIMING_KEYS = ("runtime", "samples_per_second", "steps_per_second")


def ensure_data(name: str, root: Path) -> Path:
    """The generated data set ``name`` under ``root`` (written once; the seed makes it the same every time)."""
    from datagen import GENERATORS

    folder = root / name
    if not (folder / INFO_NAME).is_file():
        GENERATORS[name](folder, seed=SEED)
    return folder


def zip_folder(folder: Path, archive: Path) -> Path:
    """``folder`` zipped under one top folder of its name, as a file manager zips it."""
    if archive.is_file():
        return archive
    temporary = archive.with_suffix(".tmp")
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED) as opened:  # PNGs do not compress further
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                opened.write(path, Path(folder.name) / path.relative_to(folder))
    os.replace(temporary, archive)
    return archive


def start_app(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = work / "app.log"
    command = [sys.executable, "app.py", "--port", str(port), "--log-db", "off", "--jobs-dir", str(work / "jobs")]
    process = subprocess.Popen(command, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    wait_for_http(url, process, timeout_s=600, log_path=log)
    return process, url


def train_in_the_tab(client, archive: Path, recipe: dict, poll_s: float = 2.0) -> dict:
    """Start a job through ``/train_start`` and poll ``/train_status`` until it ends; its last status."""
    from gradio_client import handle_file

    job_id, _ = client.predict(
        handle_file(str(archive)),
        "classifier",
        "",
        recipe["epochs"],
        recipe["image_size"],
        recipe["learning_rate"],
        recipe["augmentation"],
        False,
        True,
        SEED,
        recipe["advanced"],
        api_name="/train_start",
    )
    while True:
        status = client.predict(job_id, api_name="/train_status")
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(poll_s)


def cli_argv(job_command: str, job_data: str, data: Path, output_dir: Path) -> list[str]:
    """The job's command line with the original data folder and another output folder."""
    words = shlex.split(job_command)[3:]  # drop "python -m MODULE"
    argv = [word.replace(job_data, str(data)) for word in words]
    argv[argv.index("--output_dir") + 1] = str(output_dir)
    return argv


def train_from_the_cli(argv: list[str], log: Path) -> float:
    """Run the CLI; its wall time (raises on failure with the log's path)."""
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "train.classification.train", *argv],
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the CLI run failed with {done.returncode}; see {log}")
    return time.perf_counter() - started


def compare_metrics(tab: dict, cli: dict) -> dict:
    """Every learned metric side by side; ``match`` when all are equal (timings left out)."""
    keys = sorted(k for k in tab.keys() | cli.keys() if not any(t in k for t in TIMING_KEYS))
    different = [k for k in keys if tab.get(k) != cli.get(k)]
    return {"match": not different, "different": {k: [tab.get(k), cli.get(k)] for k in different}, "compared": keys}


def run_dataset(name: str, client, work: Path, epochs: float | None, rounds: int) -> dict:
    """``rounds`` pairs of (tab, CLI) runs, the order alternating so that neither always goes first.

    The first round learns the job's command from the tab; a CLI-first round reuses it (same data,
    flags and seed; only the output folder differs). Every run's metrics must equal the first's.
    """
    data = ensure_data(name, work / "data")
    archive = zip_folder(data, work / f"{name}.zip")
    recipe = {**RECIPES[name], **({"epochs": epochs} if epochs else {})}
    runs, command, job_data, reference = [], None, None, None
    for round_index in range(rounds):
        order = ("tab", "cli") if round_index % 2 == 0 or command is None else ("cli", "tab")
        for kind in order:
            if kind == "tab":
                status = train_in_the_tab(client, archive, recipe)
                if status["state"] != "finished":
                    return {"dataset": name, "recipe": recipe, "tab": status, "error": status["message"]}
                job_model = Path(status["model"])
                command, job_data = status["command"], str(job_model.parent / "data" / name)
                run = {"kind": "tab", "job": status["job_id"], "seconds": status["seconds"], "model": job_model}
            else:
                output_dir = work / "cli-runs" / f"{name}-{round_index}"
                if output_dir.exists():
                    import shutil

                    shutil.rmtree(output_dir)
                argv = cli_argv(command, job_data, data, output_dir)
                seconds = train_from_the_cli(argv, work / f"cli-{name}-{round_index}.log")
                run = {"kind": "cli", "seconds": round(seconds, 1), "model": output_dir}
                cli_command = shlex.join(["python", "-m", "train.classification.train", *argv])
            run["round"] = round_index
            run["metrics"] = json.loads((Path(run.pop("model")) / ALL_RESULTS_FILE).read_text())
            reference = reference or run["metrics"]
            run["comparison"] = compare_metrics(reference, run["metrics"])
            runs.append(run)
    tab = [run["seconds"] for run in runs if run["kind"] == "tab"]
    cli = [run["seconds"] for run in runs if run["kind"] == "cli"]
    return {
        "dataset": name,
        "recipe": recipe,
        "runs": [{k: v for k, v in run.items() if k != "metrics"} for run in runs],
        "tab_seconds": tab,
        "cli_seconds": cli,
        "tab_over_cli": round(statistics.median(tab) / statistics.median(cli), 3),
        "test_accuracy": {
            kind: [r["metrics"].get("test_accuracy") for r in runs if r["kind"] == kind] for kind in ("tab", "cli")
        },  # fmt: skip
        "match": all(run["comparison"]["match"] for run in runs),
        "different": [run["comparison"]["different"] for run in runs if not run["comparison"]["match"]],
        "cli_command": cli_command,
    }


def summary_text(report: dict) -> str:
    machine = report["machine"]
    lines = [f"CPU: {machine.get('cpu_model')} ({machine.get('cores_usable')} usable cores; {report['cpu_flags']})"]
    for run in report["runs"]:
        if "error" in run:
            lines.append(f"{run['dataset']}: the tab's job ended {run['tab']['state']}: {run['error']}")
            continue
        accuracy = run["test_accuracy"]
        verdict = "identical in every run" if run["match"] else f"DIFFERENT: {run['different']}"
        order = ", ".join(f"{r['kind']} {r['seconds']:.0f} s" for r in run["runs"])
        lines.append(
            f"{run['dataset']}: {order} (median tab/CLI {run['tab_over_cli']:.2f}); test accuracy "
            f"tab {accuracy['tab']}, CLI {accuracy['cli']}; metrics {verdict}"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,parts", help="comma-separated: digits, parts")
    parser.add_argument("--epochs", type=float, help="override the recipes' epochs (a quicker run)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--rounds", type=int, default=2, help="pairs of runs per data set, the order alternating (default 2)"
    )
    args = parser.parse_args(argv)
    args.datasets = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = [name for name in args.datasets if name not in RECIPES]
    if unknown:
        parser.error(f"--datasets: unknown {unknown}; choose from {', '.join(RECIPES)}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.epochs is not None and args.epochs <= 0:
        parser.error(f"--epochs must be positive, got {args.epochs}")
    return args


def main(argv=None) -> int:
    from gradio_client import Client

    args = parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    process, url = start_app(WORK)
    try:
        client = Client(url, verbose=False)
        runs = [run_dataset(name, client, WORK, args.epochs, args.rounds) for name in args.datasets]
    finally:
        stop_process(process)
    flags = set(read_cpu_flags() or [])
    shown = " ".join(flag for flag in SHOWN_FLAGS if flag in flags) or "none of " + " ".join(SHOWN_FLAGS)
    report = {"machine": machine_info(), "cpu_flags": shown, "runs": runs}
    publish_report(report, args.out, summary_text(report))
    return 0 if all("error" not in run and run["match"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
