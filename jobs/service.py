"""What the Train tab (and its API) does: check data, start, watch, cancel and resume training jobs.

Handlers stay a few lines: they call :class:`TrainingJobs` and turn its answers into components.
"""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from common.data_check import DataCheck, check_training_data
from common.inspection_log import InspectionLog
from jobs.commands import (
    EXPORT,
    EXPORT_MODULE,
    MODULES,
    Recipe,
    check_argv,
    check_export_installed,
    command_line,
    export_argv,
    training_argv,
)
from jobs.intake import DataSourceError, server_folder, take_over, unpack_zip
from jobs.manager import JobManager
from jobs.store import FINISHED, MODEL_ZIP, Job, JobError

ZIP, SERVER_FOLDER, REVIEWED = "zip", "folder", "reviewed"
SOURCES = {ZIP: "Upload a zip", SERVER_FOLDER: "Folder on the server", REVIEWED: "Reviewed images (inspection log)"}


@dataclass(frozen=True)
class DataSource:
    """The data a job trains on: ``kind`` is a key of :data:`SOURCES`; ``value`` the zip's path or the folder's name."""

    kind: str = ZIP
    value: str | None = None

    def describe(self) -> str:
        if self.kind == ZIP:
            return Path(self.value or "").name
        if self.kind == SERVER_FOLDER:
            return f"server folder {self.value}"
        return "reviewed images of the inspection log"


class TrainingJobs:
    """Data checks and training jobs for the app.

    Args:
        manager: Runs the jobs.
        data_root: The server folder whose sub-folders users may train on (None: uploads only).
        inspection_log: Where the reviewed images come from (None: that source is off).
    """

    def __init__(
        self,
        manager: JobManager,
        data_root: str | os.PathLike | None = None,
        inspection_log: InspectionLog | None = None,
    ):
        self.manager = manager
        self.data_root = None if data_root is None else str(data_root)
        self.inspection_log = inspection_log

    # ---- data ----------------------------------------------------------------------------------------

    def check_data(self, source: DataSource, task: str, use_other: bool = True) -> DataCheck:
        """Read the chosen data as the job would and say what it holds and whether it can train.

        Raises:
            DataSourceError: the data cannot be read at all (no file, not a zip, unsafe archive, no folder).
        """
        folder, unpack_errors = self._readable_folder(source)
        check = check_training_data(folder, task, use_other=use_other)
        if unpack_errors:
            check = _with_unpack_errors(check, unpack_errors)
        return check

    def _readable_folder(self, source: DataSource) -> tuple[Path, list[tuple[str, str]]]:
        if source.kind == ZIP:
            if not source.value:
                raise DataSourceError("No data yet: upload a .zip of your training images first.")
            return unpack_zip(source.value, self.manager.store.root)
        if source.kind == SERVER_FOLDER:
            return server_folder(self.data_root, source.value or ""), []
        if source.kind == REVIEWED:
            return self._export_reviewed(self.manager.store.root / ".checks" / f"reviewed-{time.time_ns()}"), []
        raise DataSourceError(f"Unknown data source '{source.kind}'; one of: {', '.join(SOURCES)}.")

    def _export_reviewed(self, out: Path) -> Path:
        if self.inspection_log is None:
            raise DataSourceError(
                "The inspection log is off (--log-db off), so there are no reviewed images to train on."
            )
        from train.reviewed import ReviewedDatasetError, export_reviewed

        try:
            export_reviewed(self.inspection_log, out)
        except ReviewedDatasetError as error:
            shutil.rmtree(out, ignore_errors=True)
            raise DataSourceError(str(error)) from None
        return out

    # ---- jobs ----------------------------------------------------------------------------------------

    def start(self, source: DataSource, recipe: Recipe) -> Job:
        """Check the data and the command, then queue a job; nothing is queued when either is refused.

        Raises:
            DataSourceError: the data cannot be read.
            JobError: the data check refused the data, or the CLI's parser refused the command.
        """
        recipe.check()
        job_id, folder = self.manager.create()
        try:
            data_dir = self._job_data(source, folder)
            check = check_training_data(data_dir, recipe.task, use_other=recipe.use_other)
            if not check.can_train:
                raise JobError("The data check refused this data: " + " ".join(check.refusals))
            output_dir = str(self.manager.store.model_dir(job_id))
            has_other = "--other_dir" in check.data_flags
            argv = training_argv(recipe, check.data_flags, output_dir, has_other)
            check_argv(recipe.task, argv)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a refused job leaves no folder behind
            raise
        job = Job(id=job_id, task=recipe.task, module=MODULES[recipe.task], argv=argv, data=source.describe())
        return self.manager.submit(job)

    def _job_data(self, source: DataSource, folder: Path) -> Path:
        data_dir = self.manager.store.data_dir(folder.name)
        if source.kind == ZIP:
            check_folder, _ = self._readable_folder(source)
            take_over(check_folder, data_dir)
            return data_dir
        if source.kind == REVIEWED:
            return self._export_reviewed(data_dir)
        return self._readable_folder(source)[0]  # a server folder is read where it is, never copied

    def status(self, job_id: str) -> dict:
        """The job's state as JSON: ``state``, ``progress`` in [0, 1], ``message`` and, once finished, ``model``."""
        job = self.manager.get(job_id)
        progress = self.manager.progress(job.id)
        status = {
            "job_id": job.id,
            "state": job.state,
            "progress": round(progress.fraction, 4),
            "message": job.message or _running_message(job, progress, self.manager.queue_position(job.id)),
            "phase": progress.phase,
            "step": progress.step,
            "max_steps": progress.max_steps,
            "eta_seconds": None if progress.eta_seconds is None else round(progress.eta_seconds),
            "task": job.task,
            "data": job.data,
            "runs": job.runs,
            # The latest run's wall time, from process start to exit (so far, while it runs).
            "seconds": None if job.started is None else round((job.ended or time.time()) - job.started, 1),
            "command": command_line(job.module, job.argv),
        }
        if job.state == FINISHED:
            status["model"] = str(self.manager.store.model_dir(job.id))
            status["metrics"] = progress.metrics
        return status

    def export(self, job_id: str, int8: bool = False) -> Job:
        """Queue "Export for CPU" of a finished job's model: a new job that writes it with its network in ONNX.

        The export checks the graph against PyTorch on the job's held-out images (and int8 against its
        floors) and refuses, in its words, a copy that answers differently; the exported model then
        joins the model lists like a trained one.

        Raises:
            JobError: the job has not finished, is itself an export, or exporting is not installed.
        """
        source = self.manager.get(job_id)
        model_dir = self.manager.model_dir(source.id)
        if model_dir is None:
            raise JobError(f"{source.id} has not finished, so there is no model to export yet.")
        if source.task == EXPORT:
            raise JobError(f"{source.id} is already an export (ONNX); export the job that trained the model.")
        check_export_installed()
        export_id, _ = self.manager.create()
        output_dir = str(self.manager.store.model_dir(export_id))
        argv = export_argv(str(model_dir), output_dir, source.argv, int8)
        precision = "int8" if int8 else "float32"
        job = Job(id=export_id, task=EXPORT, module=EXPORT_MODULE, argv=argv, data=f"{source.id}, ONNX {precision}")
        return self.manager.submit(job)

    def cancel(self, job_id: str) -> Job:
        return self.manager.cancel(job_id)

    def resume(self, job_id: str) -> Job:
        return self.manager.resume(job_id)

    def model_zip(self, job_id: str) -> Path:
        """A zip of the finished model (weights, config, calibration, report; no training checkpoints).

        Raises:
            JobError: the job has not finished.
        """
        model_dir = self.manager.model_dir(job_id)
        if model_dir is None:
            raise JobError(f"{job_id} has not finished, so there is no model to download yet.")
        target = model_dir.parent / MODEL_ZIP
        if target.is_file() and target.stat().st_mtime >= model_dir.stat().st_mtime:
            return target
        temporary = target.with_suffix(".tmp")
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(model_dir.rglob("*")):
                relative = path.relative_to(model_dir)
                if path.is_file() and not relative.parts[0].startswith("checkpoint-"):
                    archive.write(path, Path(f"{job_id}-model") / relative)
        os.replace(temporary, target)
        return target


def _running_message(job: Job, progress, queue_position: int | None) -> str:
    if queue_position is not None:
        return f"Waiting in the queue (position {queue_position})."
    if progress.phase is None:
        return "Starting the training process..."
    if progress.max_steps and progress.phase == "training":
        return f"{progress.phase.capitalize()}: step {progress.step} of {progress.max_steps}."
    return f"{progress.phase.capitalize()}..."


def _with_unpack_errors(check: DataCheck, errors: list[tuple[str, str]]) -> DataCheck:
    from dataclasses import replace

    return replace(check, unreadable=[*errors, *check.unreadable])
