"""Training jobs on disk: one folder per job, holding its record, data, log, progress and model.

    JOBS_DIR/job-7/
        job.json        this record (state, command, timings, reason of a failure)
        data/           the extracted upload (absent when the job trains on a folder of the server)
        train.log       everything the training process printed
        progress.jsonl  what it reported while running (common.training_progress)
        model/          the CLI's --output_dir: checkpoints while training, the final model after

The record is rewritten whole through a temporary file and ``os.replace``, so a crash never
leaves half a ``job.json``; a restart of the app reads every folder back.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED = (
    "queued",
    "running",
    "finished",
    "failed",
    "cancelled",
    "interrupted",
)
STATES = (QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED)
ENDED = (FINISHED, FAILED, CANCELLED, INTERRUPTED)
# A stopped, crashed or interrupted job continues from its last checkpoint.
RESUMABLE = (FAILED, CANCELLED, INTERRUPTED)

RECORD_FILE = "job.json"
DATA_FOLDER = "data"
LOG_FILE = "train.log"
PROGRESS_FILE = "progress.jsonl"
MODEL_FOLDER = "model"
MODEL_ZIP = "model.zip"

_JOB_ID = re.compile(r"^job-(\d+)$")


class JobError(ValueError):
    """A job cannot be created, started, cancelled or resumed as asked; the message says why and what to do."""


@dataclass
class Job:
    """One training job's record.

    Attributes:
        id: ``job-N``, N counting up across restarts.
        task: ``classifier``, ``multi_label`` or ``segmenter``.
        module: The training CLI it runs (``python -m MODULE ARGV``).
        argv: The CLI's flags, data and output folders included.
        data: What the user trained on, in words (the zip's name, the folder, "reviewed images").
        state: One of :data:`STATES`.
        message: The reason of a failure, or what the job said last.
        created, started, ended: Unix times (started/ended: of the latest run).
        pid: The training process of a running job.
        runs: How many times it was started (2 after one resume).
    """

    id: str
    task: str
    module: str
    argv: list[str]
    data: str
    state: str = QUEUED
    message: str = ""
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    runs: int = 0

    @classmethod
    def from_dict(cls, record: dict) -> Job:
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in known})

    @property
    def number(self) -> int:
        match = _JOB_ID.match(self.id)
        return int(match.group(1)) if match else 0


class JobStore:
    """The jobs folder: creates job folders and reads and writes their records."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise JobError(
                f"Cannot create the jobs folder {self.root} ({error.strerror}); start the app with --jobs-dir "
                "pointing at a writable folder."
            ) from error

    def folder(self, job_id: str) -> Path:
        if not _JOB_ID.match(job_id or ""):
            raise JobError(f"'{job_id}' is not a job id; job ids look like job-3 (the Train tab lists them).")
        return self.root / job_id

    def new_folder(self) -> tuple[str, Path]:
        """A fresh ``job-N`` folder, N one past the highest on disk (the caller holds the manager's lock)."""
        numbers = [int(m.group(1)) for p in self.root.iterdir() if (m := _JOB_ID.match(p.name))]
        number = max(numbers, default=0) + 1
        while True:
            job_id = f"job-{number}"
            try:
                (self.root / job_id).mkdir()
                return job_id, self.root / job_id
            except FileExistsError:  # another app on the same folder took it
                number += 1

    def save(self, job: Job) -> None:
        folder = self.folder(job.id)
        temporary = folder / f".{RECORD_FILE}.tmp"
        temporary.write_text(json.dumps(asdict(job), indent=1))
        os.replace(temporary, folder / RECORD_FILE)

    def load_all(self) -> list[Job]:
        """Every job with a readable record, oldest first; a folder without one (a crash during creation) is skipped."""
        jobs = []
        for path in self.root.iterdir():
            if not _JOB_ID.match(path.name):
                continue
            try:
                jobs.append(Job.from_dict(json.loads((path / RECORD_FILE).read_text())))
            except (OSError, json.JSONDecodeError, TypeError):
                continue
        return sorted(jobs, key=lambda job: job.number)

    def model_dir(self, job_id: str) -> Path:
        return self.folder(job_id) / MODEL_FOLDER

    def log_file(self, job_id: str) -> Path:
        return self.folder(job_id) / LOG_FILE

    def progress_file(self, job_id: str) -> Path:
        return self.folder(job_id) / PROGRESS_FILE

    def data_dir(self, job_id: str) -> Path:
        return self.folder(job_id) / DATA_FOLDER


def log_tail(path: str | os.PathLike, lines: int = 15, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of a log, reading only its end (logs of long runs grow large)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(size - max_bytes, 0))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    # Progress bars rewrite their line with carriage returns; keep what the last write left.
    rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines()]
    return [row for row in rows if row.strip()][-lines:]
