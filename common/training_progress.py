"""What a training process tells whoever started it, while it runs: the progress file, written once.

A training CLI started with ``VISPECT_PROGRESS_FILE=PATH`` in its environment appends one JSON
object per line to PATH: the phase it is in, the step it reached, each logged loss and validation
metric, and how it ended (finished with its metrics, failed with the error sentence the CLI
printed, or stopped on request). ``train/progress.py`` writes it; the app's job runner
(``jobs/``) reads it with :func:`read_progress`. A line is written whole and flushed, so a reader
never sees half an event except the last line of a process that was killed mid-write, which
:func:`read_progress` skips.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

PROGRESS_ENV = "VISPECT_PROGRESS_FILE"

# Phases, in the order a run goes through them.
CHECKING_DATA = "checking data"
TRAINING = "training"
EVALUATING = "evaluating"
CALIBRATING = "calibrating"
WRITING_REPORT = "writing report"
# The one phase of an export job (python -m train.export, the Train tab's "Export for CPU").
EXPORTING = "exporting"
PHASES = (CHECKING_DATA, TRAINING, EVALUATING, CALIBRATING, WRITING_REPORT, EXPORTING)

# How a run ended.
FINISHED, FAILED, STOPPED = "finished", "failed", "stopped"

# The exit status of a training CLI stopped on request (SIGTERM), after it saved a checkpoint:
# 128 + SIGTERM, what a shell reports for a process ended by that signal.
STOPPED_EXIT = 143

# Where each phase starts on the overall progress bar; training fills the span up to the next.
_PHASE_START = {
    CHECKING_DATA: 0.0,
    TRAINING: 0.03,
    EVALUATING: 0.9,
    CALIBRATING: 0.94,
    WRITING_REPORT: 0.97,
    EXPORTING: 0.05,
}


@dataclass
class TrainingProgress:
    """Everything a progress file says so far, folded into the latest state.

    Attributes:
        phase: The latest phase, or None before the process wrote anything.
        step, max_steps: Optimiser steps done and planned (0 before training starts).
        steps_per_second: Speed of this run's steps (steps resumed from a checkpoint not counted).
        losses: ``(step, training loss)`` pairs as logged.
        evaluations: ``(step, {metric: value})`` per validation, metric names without ``eval_``.
        ended: ``finished``, ``failed`` or ``stopped`` once the process said so, else None.
        message: The error sentence of a failed run, or what a finished or stopped run said.
        metrics: A finished run's final metrics.
        output_dir: Where the finished model is.
    """

    phase: str | None = None
    step: int = 0
    max_steps: int = 0
    steps_per_second: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    evaluations: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    ended: str | None = None
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: str | None = None

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1]: phases in order, training's share by steps."""
        if self.ended == FINISHED:
            return 1.0
        if self.phase is None:
            return 0.0
        start = _PHASE_START.get(self.phase, 0.0)
        if self.phase == TRAINING and self.max_steps:
            span = _PHASE_START[EVALUATING] - start
            return start + span * min(self.step / self.max_steps, 1.0)
        return start

    @property
    def eta_seconds(self) -> float | None:
        """Seconds of training left at this run's speed; None outside training or before a speed is known."""
        if self.phase != TRAINING or not self.steps_per_second or not self.max_steps:
            return None
        return max(self.max_steps - self.step, 0) / self.steps_per_second


class ProgressWriter:
    """Appends events to a progress file; every method does nothing when there is no file."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)

    @classmethod
    def from_env(cls) -> ProgressWriter:
        return cls(os.environ.get(PROGRESS_ENV) or None)

    def write(self, event: str, **values) -> None:
        if self.path is None:
            return
        line = json.dumps({"time": time.time(), "event": event, **values}, default=float)
        with self.path.open("a", encoding="utf-8") as handle:  # reopened per event: the reader sees it at once
            handle.write(line + "\n")

    def phase(self, name: str) -> None:
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; one of {PHASES}")
        self.write("phase", phase=name)

    def step(self, step: int, max_steps: int, steps_per_second: float | None) -> None:
        self.write("step", step=step, max_steps=max_steps, steps_per_second=steps_per_second)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.write("log", step=step, values=values)

    def end(self, how: str, message: str = "", **details) -> None:
        if how not in (FINISHED, FAILED, STOPPED):
            raise ValueError(f"unknown ending {how!r}")
        self.write("end", how=how, message=message, **details)


def read_progress(path: str | os.PathLike) -> TrainingProgress:
    """Fold a progress file into a :class:`TrainingProgress` (an empty one when the file is missing)."""
    progress = TrainingProgress()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return progress
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a process killed while writing it
        _apply(progress, event)
    return progress


def _apply(progress: TrainingProgress, event: dict) -> None:
    kind = event.get("event")
    if kind == "phase":
        progress.phase = event.get("phase")
    elif kind == "step":
        progress.step = int(event.get("step") or 0)
        progress.max_steps = int(event.get("max_steps") or 0)
        progress.steps_per_second = event.get("steps_per_second")
    elif kind == "log":
        step, values = int(event.get("step") or 0), dict(event.get("values") or {})
        if "loss" in values:
            progress.losses.append((step, float(values["loss"])))
        scores = {key[len("eval_") :]: float(value) for key, value in values.items() if key.startswith("eval_")}
        if scores:
            progress.evaluations.append((step, scores))
    elif kind == "end":
        progress.ended = event.get("how")
        progress.message = event.get("message") or ""
        progress.metrics = dict(event.get("metrics") or {})
        progress.output_dir = event.get("output_dir")
