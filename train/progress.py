"""Report a training run's progress to whoever started it, and stop cleanly when asked to.

The training CLIs call :func:`phase` as they go, put :class:`ProgressCallback` in their
Trainer, and run their ``main`` through :func:`run_cli`. With ``VISPECT_PROGRESS_FILE`` set (the
app's job runner sets it) every step, log and phase lands in that file, in the format
``common.training_progress`` reads; without it, only the stop-on-SIGTERM behaviour remains:

- SIGTERM during training makes the Trainer save a checkpoint at the current step and stop,
  and the CLI exits with ``STOPPED_EXIT``; rerun with the same ``--output_dir`` to resume.
- SIGTERM before training started (loading data, building the model) exits at once: there is
  nothing to keep yet.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable

from transformers import TrainerCallback

from common.training_progress import FAILED, FINISHED, STOPPED, STOPPED_EXIT, TRAINING, ProgressWriter

_writer = ProgressWriter(None)
_stop_requested = False
_training = False


def phase(name: str) -> None:
    """Say which phase the run entered (one of ``common.training_progress.PHASES``)."""
    _writer.phase(name)


def stop_requested() -> bool:
    """True once SIGTERM arrived; the CLI then exits with ``STOPPED_EXIT`` instead of writing its report."""
    return _stop_requested


def _on_sigterm(signum, frame) -> None:
    global _stop_requested
    _stop_requested = True
    if not _training:
        # Before training there is no checkpoint to save; leave now, through normal interpreter exit.
        _writer.end(STOPPED, "Stopped before any checkpoint was written; nothing was saved.")
        raise SystemExit(STOPPED_EXIT)


class ProgressCallback(TrainerCallback):
    """Writes steps and logs to the progress file; turns a stop request into save-and-stop."""

    def __init__(self, every_seconds: float = 1.0):
        self.every_seconds = every_seconds
        self._started = self._last = 0.0
        self._first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        global _training
        _training = True
        phase(TRAINING)
        self._started = self._last = time.monotonic()
        self._first_step = state.global_step  # a resumed run starts past 0; its speed counts its own steps
        _writer.step(state.global_step, state.max_steps, None)
        return self._stop_if_asked(control)

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        if now - self._last >= self.every_seconds or state.global_step >= state.max_steps:
            done = state.global_step - self._first_step
            speed = done / (now - self._started) if done and now > self._started else None
            _writer.step(state.global_step, state.max_steps, speed)
            self._last = now
        return self._stop_if_asked(control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {key: value for key, value in (logs or {}).items() if isinstance(value, (int, float))}
        if numbers:
            _writer.log(state.global_step, numbers)

    def on_train_end(self, args, state, control, **kwargs):
        global _training
        _training = False

    @staticmethod
    def _stop_if_asked(control):
        if _stop_requested:
            control.should_save = True
            control.should_training_stop = True
        return control


def finish(metrics: dict, output_dir: str) -> None:
    """Say that the run finished, with its final metrics and where the model is."""
    numbers = {key: value for key, value in metrics.items() if isinstance(value, (int, float))}
    _writer.end(FINISHED, f"The model is in {output_dir}.", metrics=numbers, output_dir=str(output_dir))


def fail(reason: str) -> None:
    """Say that the run failed, in the sentence the user should read (for CLIs that exit on their own)."""
    _writer.end(FAILED, reason)


def run_cli(main: Callable[[], object], expected_errors: tuple[type[Exception], ...]) -> None:
    """Run a training CLI's ``main`` with progress reporting and stop-on-SIGTERM; errors end it in one sentence.

    ``main`` calls :func:`finish` when it has written its model, and returns early (without
    writing one) when :func:`stop_requested` says so after training.

    Args:
        main: The script's ``main()``.
        expected_errors: Errors that mean the input is wrong (bad data, bad flag): printed as
            ``error: ...`` on stderr, recorded as the failure reason, exit status 1.
    """
    global _writer
    _writer = ProgressWriter.from_env()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        main()
    except expected_errors as error:
        _writer.end(FAILED, str(error))
        sys.exit(f"error: {error}")
    except SystemExit:
        raise
    except BaseException as error:
        # A bug, not a user error: the traceback stays on stderr (the job's log); the reader gets its last line.
        _writer.end(FAILED, f"{type(error).__name__}: {error}")
        raise
    if _stop_requested:
        _writer.end(STOPPED, "Stopped on request after saving a checkpoint; resume to continue.")
        sys.exit(STOPPED_EXIT)
