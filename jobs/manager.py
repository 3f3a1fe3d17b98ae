"""Run training jobs one (or N) at a time as separate processes; queue, cancel, resume, survive restarts.

Each job is ``python -m train.<task>.train FLAGS`` in its own process and process group, so the
app stays responsive and a crash (or an out-of-memory kill) cannot take it down. A worker thread
starts queued jobs while fewer than ``max_running`` run; a watcher thread per running job waits
for its process and decides how it ended from what the process reported (its progress file) and
its exit status.

Cancel sends SIGTERM: the CLI saves a checkpoint at the current step and exits (see
``train/progress.py``); Resume queues the same command again, and the CLI continues from that
checkpoint. When the app stops, running jobs are stopped the same way and recorded as
interrupted; after a restart they are listed with Resume offered. A job whose process survived
the app (the app was killed) is picked up again and watched until it ends.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common.training_progress import FAILED as ENDED_FAILED
from common.training_progress import FINISHED as ENDED_FINISHED
from common.training_progress import PROGRESS_ENV, STOPPED, STOPPED_EXIT, TrainingProgress, read_progress
from jobs.store import (
    CANCELLED,
    ENDED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    QUEUED,
    RESUMABLE,
    RUNNING,
    Job,
    JobError,
    JobStore,
    log_tail,
)

logger = logging.getLogger("vispect.jobs")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class JobManager:
    """The app's training jobs.

    Args:
        root: The jobs folder (one sub-folder per job).
        max_running: Jobs that train at the same time; the rest wait in the queue. On 2 cores,
            two jobs take as long together as one after the other.
        on_finished: Called with each finished job (also for those found finished at start),
            e.g. to offer its model in the app's model lists.
        stop_grace_seconds: How long a cancelled job may take to save its checkpoint before it is killed.
        python: The interpreter the CLIs run with (this one by default).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        max_running: int = 1,
        on_finished: Callable[[Job], None] | None = None,
        stop_grace_seconds: float = 120.0,
        python: str = sys.executable,
    ):
        if max_running < 1:
            raise JobError(f"At least one job must be able to run, got max_running={max_running}.")
        self.store = JobStore(root)
        self.max_running = max_running
        self.on_finished = on_finished
        self.stop_grace_seconds = stop_grace_seconds
        self.python = python
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._processes: dict[str, subprocess.Popen] = {}
        self._cancelling: set[str] = set()
        self._closed = False
        for job in self.store.load_all():
            self._jobs[job.id] = job
            self._recover(job)
        self._worker = threading.Thread(target=self._run_queue, name="vispect-jobs", daemon=True)
        self._worker.start()

    # ---- reading -------------------------------------------------------------------------------------

    def jobs(self) -> list[Job]:
        """Every job, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda job: -job.number)

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get((job_id or "").strip())
        if job is None:
            raise JobError(f"There is no job '{job_id}'. Known jobs: {', '.join(j.id for j in self.jobs()) or 'none'}.")
        return job

    def progress(self, job_id: str) -> TrainingProgress:
        return read_progress(self.store.progress_file(self.get(job_id).id))

    def log_lines(self, job_id: str, lines: int = 15) -> list[str]:
        return log_tail(self.store.log_file(self.get(job_id).id), lines)

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start, None for a job that is not waiting."""
        with self._lock:
            waiting = [job.id for job in sorted(self._jobs.values(), key=lambda j: j.number) if job.state == QUEUED]
        return waiting.index(job_id) + 1 if job_id in waiting else None

    def model_dir(self, job_id: str) -> Path | None:
        """The finished model of a job, None before it finished."""
        job = self.get(job_id)
        return self.store.model_dir(job.id) if job.state == FINISHED else None

    # ---- changing ------------------------------------------------------------------------------------

    def create(self) -> tuple[str, Path]:
        """A new job folder to put the data in; :meth:`submit` then queues the job."""
        with self._lock:
            return self.store.new_folder()

    def submit(self, job: Job) -> Job:
        """Queue ``job`` (its folder made by :meth:`create`)."""
        with self._lock:
            job.state, job.message = QUEUED, ""
            self.store.save(job)
            self._jobs[job.id] = job
            self._wake.notify_all()
        return job

    def cancel(self, job_id: str) -> Job:
        """Stop a running job (it keeps its last checkpoint) or take a queued one off the queue."""
        with self._lock:
            job = self.get(job_id)
            if job.state == QUEUED:
                self._set(job, CANCELLED, "Cancelled before it started; Resume puts it back in the queue.")
                return job
            if job.state != RUNNING:
                raise JobError(f"{job.id} is {job.state}, not running or queued: there is nothing to cancel.")
            self._cancelling.add(job.id)
            job.message = "Stopping: saving a checkpoint at the current step..."
            self.store.save(job)
            pid = job.pid
        self._signal(pid, signal.SIGTERM)
        threading.Thread(target=self._kill_after_grace, args=(job.id, pid), daemon=True).start()
        return job

    def resume(self, job_id: str) -> Job:
        """Queue a cancelled, failed or interrupted job again; its CLI continues from the last checkpoint."""
        with self._lock:
            job = self.get(job_id)
            if job.state not in RESUMABLE:
                raise JobError(f"{job.id} is {job.state}; only a cancelled, failed or interrupted job can be resumed.")
            if job.pid is not None and _is_job_process(job.pid, self.store.folder(job.id)):
                raise JobError(f"{job.id} is still saving its checkpoint; resume it in a moment.")
            self._set(job, QUEUED, "Waiting to resume from its last checkpoint.")
            self._wake.notify_all()
            return job

    def close(self, stop_running: bool = True) -> None:
        """Stop starting jobs; with ``stop_running``, ask running jobs to save and stop, recorded as interrupted."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            running = [job for job in self._jobs.values() if job.state == RUNNING]
            for job in running if stop_running else []:
                self._set(job, INTERRUPTED, "The app stopped while this job ran; Resume continues from its checkpoint.")
                self._signal(job.pid, signal.SIGTERM)

    # ---- running -------------------------------------------------------------------------------------

    def _run_queue(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._startable():
                    self._wake.wait(timeout=5.0)
                if self._closed:
                    return
                job = self._startable()
                self._start(job)

    def _startable(self) -> Job | None:
        running = sum(job.state == RUNNING for job in self._jobs.values())
        if running >= self.max_running:
            return None
        queued = [job for job in self._jobs.values() if job.state == QUEUED]
        return min(queued, key=lambda job: job.number) if queued else None

    def _start(self, job: Job) -> None:
        folder = self.store.folder(job.id)
        progress_file = self.store.progress_file(job.id)
        progress_file.unlink(missing_ok=True)  # each run reports afresh; the log keeps every run
        env = {**os.environ, PROGRESS_ENV: str(progress_file), "PYTHONUNBUFFERED": "1"}
        try:
            with self.store.log_file(job.id).open("a", encoding="utf-8") as log:
                log.write(f"\n=== run {job.runs + 1} of {job.id}: python -m {job.module} {' '.join(job.argv)}\n")
                log.flush()
                process = subprocess.Popen(
                    [self.python, "-m", job.module, *job.argv],
                    cwd=PROJECT_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own process group: Ctrl-C in the app's terminal reaches the app, which stops
                    # the job cleanly (close()), instead of killing it mid-write.
                    start_new_session=True,
                )
        except OSError as error:
            self._set(job, FAILED, f"The training process could not be started: {error}.")
            return
        job.pid, job.runs, job.started, job.ended = process.pid, job.runs + 1, time.time(), None
        self._set(job, RUNNING, "")
        self._processes[job.id] = process
        threading.Thread(target=self._watch, args=(job.id, process, folder), daemon=True).start()

    def _watch(self, job_id: str, process: subprocess.Popen, folder: Path) -> None:
        returncode = process.wait()
        self._finish(job_id, returncode)

    def _finish(self, job_id: str, returncode: int | None) -> None:
        with self._lock:
            if self._closed:
                return  # the app is stopping; the record already says interrupted, and the next app owns it
            job = self._jobs[job_id]
            self._processes.pop(job_id, None)
            cancelled = job_id in self._cancelling
            self._cancelling.discard(job_id)
            if job.state != RUNNING:  # close() already recorded it as interrupted
                job.pid = None
                self.store.save(job)
                self._wake.notify_all()
                return
            state, message = self._outcome(job, returncode, cancelled)
            job.pid, job.ended = None, time.time()
            self._set(job, state, message)
            self._wake.notify_all()
        if state == FINISHED:
            self._announce(job)

    def _outcome(self, job: Job, returncode: int | None, cancelled: bool) -> tuple[str, str]:
        progress = read_progress(self.store.progress_file(job.id))
        at = f" at step {progress.step} of {progress.max_steps}" if progress.max_steps else ""
        if progress.ended == ENDED_FINISHED and returncode in (0, None):
            return FINISHED, progress.message
        if cancelled or progress.ended == STOPPED or returncode == STOPPED_EXIT:
            if not progress.max_steps:  # stopped before training (or an export): nothing to continue from
                return CANCELLED, f"Cancelled; Resume starts it again. {progress.message}".strip()
            kept = f"Cancelled{at} with a checkpoint kept; Resume continues from it."
            return CANCELLED, f"{kept} {progress.message}".strip()
        if progress.ended == ENDED_FAILED:
            return FAILED, progress.message
        if returncode is not None and returncode < 0:
            name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
            return FAILED, (
                f"The training process was killed ({name}){at}, e.g. out of memory or stopped from outside. "
                "Resume continues from the last checkpoint."
            )
        return FAILED, _last_error(self.store.log_file(job.id)) or f"The training process exited with {returncode}."

    def _announce(self, job: Job) -> None:
        if self.on_finished is None:
            return
        try:
            self.on_finished(job)
        except Exception:  # a model list that cannot take it must not stop the job runner
            logger.exception("on_finished failed for %s", job.id)

    def _recover(self, job: Job) -> None:
        """After a restart: watch a job whose process outlived the app; otherwise it was interrupted."""
        if job.state == FINISHED:
            self._announce(job)
        if job.state != RUNNING:
            return
        if job.pid is not None and _is_job_process(job.pid, self.store.folder(job.id)):
            threading.Thread(target=self._watch_adopted, args=(job.id, job.pid), daemon=True).start()
            return
        job.pid = None
        self._set(job, INTERRUPTED, "The app stopped while this job ran; Resume continues from its last checkpoint.")

    def _watch_adopted(self, job_id: str, pid: int) -> None:
        # Not our child: no exit status to wait for, so poll; the progress file says how it ended.
        while _is_job_process(pid, self.store.folder(job_id)):
            time.sleep(1.0)
        self._finish(job_id, None)

    def _kill_after_grace(self, job_id: str, pid: int | None) -> None:
        deadline = time.monotonic() + self.stop_grace_seconds
        while time.monotonic() < deadline:
            with self._lock:
                if self._jobs[job_id].pid != pid:
                    return
            time.sleep(0.5)
        logger.warning("%s did not stop within %.0f s of SIGTERM; killing it", job_id, self.stop_grace_seconds)
        self._signal(pid, signal.SIGKILL)

    def _set(self, job: Job, state: str, message: str) -> None:
        job.state, job.message = state, message
        if state in ENDED and job.ended is None:
            job.ended = time.time()
        self.store.save(job)

    @staticmethod
    def _signal(pid: int | None, signum: int) -> None:
        if pid is None:
            return
        try:
            os.killpg(pid, signum)  # the CLI and anything it started (dataloader workers)
        except ProcessLookupError:
            pass


def _is_job_process(pid: int, folder: Path) -> bool:
    """True when ``pid`` is alive and is this job's training process (its command line names the job's folder)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return str(folder) in command


def _last_error(log: Path) -> str | None:
    """The CLI's ``error: ...`` sentence, or a traceback's last line, from the end of the log."""
    lines = log_tail(log, lines=40)
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: ") :]
    for line in reversed(lines):
        if not line.startswith((" ", "=== ")):
            return line
    return None
