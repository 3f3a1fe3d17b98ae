"""Training jobs as the Train tab runs them: real CLI processes on a tiny model and generated data.

Each job is ``python -m train.classification.train`` in its own process, as from the browser;
the tests cancel, kill, resume and "restart the app" (a second JobManager on the same folder).
"""

from __future__ import annotations

import json
import os
import signal
import time
import zipfile
from pathlib import Path

import pytest

from common.training_progress import TRAINING, read_progress
from jobs.commands import Recipe, advanced_flags
from jobs.intake import DataSourceError, server_folder
from jobs.manager import JobManager
from jobs.service import DataSource, TrainingJobs
from jobs.store import CANCELLED, FAILED, FINISHED, INTERRUPTED, QUEUED, RUNNING, JobError
from pipelines.classification import ImageClassifier
from pipelines.registry import ClassifierRegistry
from tests.conftest import noise_png_bytes, write_colour_folders, write_zip, zip_folder

pytestmark = pytest.mark.slow
# Jobs that must still be training when they are cancelled or the app stops: a batch of one makes 24
# steps an epoch (960 in 40 epochs), where a batch of 32 made one, and a quiet machine finished all 40
# before the cancel arrived.
ONE_BY_ONE = "--per_device_train_batch_size 1"
JOB_TIMEOUT = 300  # seconds: a tiny model trains in seconds, but a shared 2-core machine can be slow


@pytest.fixture(scope="module")
def colours_zip(tmp_path_factory) -> Path:
    """A zip of one folder holding train/validation/test class folders and other/, as a user zips it."""
    root = tmp_path_factory.mktemp("colours-zip")
    data = write_colour_folders(root / "colours", per_split={"train": 8, "validation": 4, "test": 4})
    return zip_folder(data, root / "colours.zip")


@pytest.fixture
def jobs(tmp_path):
    """(TrainingJobs, finished-job ids) over a fresh jobs folder; closed (running jobs stopped) at the end."""
    finished = []
    manager = JobManager(tmp_path / "jobs", on_finished=lambda job: finished.append(job.id), stop_grace_seconds=30)
    yield TrainingJobs(manager), finished
    manager.close()


def _recipe(tiny_vit_dir, **changes) -> Recipe:
    return Recipe(**{"base_model": str(tiny_vit_dir), "epochs": 2, "augmentation": "none", **changes})


def wait_for(jobs: TrainingJobs, job_id: str, done, timeout: float = JOB_TIMEOUT) -> dict:
    """Poll the job's status until ``done(status)``; fail with the status and log on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.status(job_id)
        if done(status):
            return status
        time.sleep(0.3)
    log = "\n".join(jobs.manager.log_lines(job_id, 30))
    pytest.fail(f"{job_id} did not get there in {timeout} s: {status}\n{log}")


def ended(status: dict) -> bool:
    return status["state"] not in (QUEUED, RUNNING)


def training_at_step(step: int):
    return lambda status: ended(status) or (status["phase"] == TRAINING and status["step"] >= step)


def test_a_job_trains_a_model_that_the_registry_then_serves(jobs, colours_zip, tiny_vit_dir):
    service, finished = jobs
    registry = ClassifierRegistry.from_sources(models_dir=None)
    job = service.start(DataSource("zip", str(colours_zip)), _recipe(tiny_vit_dir, epochs=3))
    assert service.status(job.id)["state"] in (QUEUED, RUNNING)
    status = wait_for(service, job.id, ended)
    assert status["state"] == FINISHED, status
    assert status["progress"] == 1.0 and finished == [job.id]
    assert status["metrics"]["test_accuracy"] > 0.9  # colour patches: far above chance (1/3)
    registry.add(f"{job.id}", status["model"])
    classifier = registry.get(status["model"])
    assert sorted(classifier.id2label.values()) == ["blue", "green", "red"]
    progress = read_progress(service.manager.store.progress_file(job.id))
    assert progress.losses and progress.evaluations  # the curves the tab draws
    assert [e[1]["accuracy"] for e in progress.evaluations]
    # The model zip holds the model, not the training checkpoints.
    names = zipfile.ZipFile(service.model_zip(job.id)).namelist()
    assert f"{job.id}-model/model.safetensors" in names and not any("checkpoint-" in name for name in names)
    # The command a terminal user would type to repeat the run.
    assert status["command"].startswith("python -m train.classification.train --train_dir ")


def test_a_bad_flag_is_refused_in_the_cli_words_before_anything_is_queued(jobs, colours_zip, tiny_vit_dir):
    service, _ = jobs
    with pytest.raises(JobError, match="refused.*--no_such_flag"):
        service.start(DataSource("zip", str(colours_zip)), _recipe(tiny_vit_dir, advanced="--no_such_flag 3"))
    with pytest.raises(JobError, match="--image_size must look like 224x224"):
        service.start(DataSource("zip", str(colours_zip)), _recipe(tiny_vit_dir, advanced="--image_size wide"))
    with pytest.raises(JobError, match="--output_dir is set by the job"):
        service.start(DataSource("zip", str(colours_zip)), _recipe(tiny_vit_dir, advanced="--output_dir /tmp/x"))
    assert service.manager.jobs() == []
    assert sorted(p.name for p in service.manager.store.root.iterdir()) == [".checks"]  # no job folder left


def test_advanced_flags_are_split_like_a_shell_and_never_evaluated():
    assert advanced_flags("--weight_decay 0.01 --run_name 'a b'") == ["--weight_decay", "0.01", "--run_name", "a b"]
    with pytest.raises(JobError, match="check the quotes"):
        advanced_flags("--run_name 'open")
    with pytest.raises(JobError, match="must start with a --flag"):
        advanced_flags("__import__('os')")


def test_a_crashed_job_fails_with_its_reason_and_the_next_job_still_runs(jobs, colours_zip, tiny_vit_dir, tmp_path):
    service, _ = jobs
    # Passes the parser, fails when the CLI loads the model: the CLI's sentence, not a traceback.
    missing = tmp_path / "no-such-model"
    broken = service.start(DataSource("zip", str(colours_zip)), _recipe(tiny_vit_dir, base_model=str(missing)))
    fine = service.start(DataSource("zip", str(colours_zip)), _recipe(tiny_vit_dir, epochs=1))
    status = wait_for(service, broken.id, ended)
    assert status["state"] == FAILED
    assert str(missing) in status["message"] and "Traceback" not in status["message"]
    assert wait_for(service, fine.id, ended)["state"] == FINISHED


def test_a_killed_process_ends_as_failed_and_resume_finishes_it(jobs, colours_zip, tiny_vit_dir):
    service, _ = jobs
    job = service.start(DataSource("zip", str(colours_zip)), _recipe(tiny_vit_dir, epochs=30, advanced=ONE_BY_ONE))
    wait_for(service, job.id, training_at_step(3))
    os.killpg(service.manager.get(job.id).pid, signal.SIGKILL)  # as the out-of-memory killer would
    status = wait_for(service, job.id, ended)
    assert status["state"] == FAILED and "killed (SIGKILL)" in status["message"]
    service.resume(job.id)
    status = wait_for(service, job.id, ended)
    assert status["state"] == FINISHED and status["runs"] == 2


def test_cancel_keeps_a_checkpoint_and_resume_continues_from_it(jobs, colours_zip, tiny_vit_dir):
    service, _ = jobs
    job = service.start(DataSource("zip", str(colours_zip)), _recipe(tiny_vit_dir, epochs=40, advanced=ONE_BY_ONE))
    wait_for(service, job.id, training_at_step(4))
    service.cancel(job.id)
    status = wait_for(service, job.id, ended)
    assert status["state"] == CANCELLED, status
    model_dir = service.manager.store.model_dir(job.id)
    checkpoints = sorted(model_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    assert checkpoints, "cancel must leave a checkpoint to resume from"
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    assert stopped_at < status["max_steps"]
    service.resume(job.id)
    status = wait_for(service, job.id, ended)
    assert status["state"] == FINISHED, status
    log = service.manager.store.log_file(job.id).read_text()
    assert f"Resuming from {checkpoints[-1]}" in log  # continued, not restarted
    state = json.loads((model_dir / "trainer_state.json").read_text())
    assert state["global_step"] == status["max_steps"]
    assert ImageClassifier.from_pretrained(model_dir).id2label  # the resumed model loads


def test_a_second_job_waits_for_the_first(jobs, colours_zip, tiny_vit_dir):
    service, _ = jobs
    first = service.start(DataSource("zip", str(colours_zip)), _recipe(tiny_vit_dir, epochs=20, advanced=ONE_BY_ONE))
    second = service.start(DataSource("zip", str(colours_zip)), _recipe(tiny_vit_dir, epochs=1))
    wait_for(service, first.id, lambda status: status["state"] == RUNNING)
    status = service.status(second.id)
    assert status["state"] == QUEUED and "queue (position 1)" in status["message"]
    service.cancel(first.id)
    assert wait_for(service, second.id, ended)["state"] == FINISHED


def test_a_restart_lists_past_jobs_and_offers_resume_for_the_interrupted(tmp_path, colours_zip, tiny_vit_dir):
    first_app = TrainingJobs(JobManager(tmp_path / "jobs", stop_grace_seconds=30))
    done = first_app.start(DataSource("zip", str(colours_zip)), _recipe(tiny_vit_dir, epochs=1))
    wait_for(first_app, done.id, ended)
    slow = _recipe(tiny_vit_dir, epochs=40, advanced=ONE_BY_ONE)
    running = first_app.start(DataSource("zip", str(colours_zip)), slow)
    wait_for(first_app, running.id, training_at_step(2))
    first_app.manager.close()  # the app stops: its running job saves a checkpoint and stops

    offered = []
    second_app = TrainingJobs(JobManager(tmp_path / "jobs", on_finished=lambda job: offered.append(job.id)))
    try:
        states = {job.id: job.state for job in second_app.manager.jobs()}
        assert states == {done.id: FINISHED, running.id: INTERRUPTED}
        assert offered == [done.id]  # the finished model is offered again after the restart
        for _ in range(120):  # the old process may still be saving its checkpoint
            try:
                second_app.resume(running.id)
                break
            except JobError as error:
                assert "still saving" in str(error)
                time.sleep(0.5)
        assert wait_for(second_app, running.id, ended)["state"] == FINISHED
    finally:
        second_app.manager.close()


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ({"train/a/1.png": b"", "../evil.png": b""}, "goes up a folder"),
        ({"train/a/zeros.bmp": bytes(20 * 1024 * 1024)}, "zip bomb"),
    ],
    ids=["zip-slip", "zip-bomb"],
)
def test_unsafe_archives_are_refused_and_leave_nothing(jobs, tmp_path, tiny_vit_dir, members, words):
    service, _ = jobs
    members = {name: content or noise_png_bytes() for name, content in members.items()}
    archive = write_zip(tmp_path / "unsafe.zip", members, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(DataSourceError, match=words):
        service.check_data(DataSource("zip", str(archive)), "classifier")
    with pytest.raises(DataSourceError, match=words):
        service.start(DataSource("zip", str(archive)), _recipe(tiny_vit_dir))
    assert service.manager.jobs() == []
    assert not (tmp_path.parent / "evil.png").exists() and not (tmp_path / "evil.png").exists()
    checks = service.manager.store.root / ".checks"
    assert not checks.exists() or list(checks.iterdir()) == []


def test_a_server_folder_must_lie_under_the_data_root(tmp_path):
    root = tmp_path / "data"
    (root / "parts").mkdir(parents=True)
    assert server_folder(root, "parts") == (root / "parts").resolve()
    for outside in ("..", "/etc", "parts/../.."):
        with pytest.raises(DataSourceError, match="outside the data folder"):
            server_folder(root, outside)
    with pytest.raises(DataSourceError, match="--train-data-root"):
        server_folder(None, "parts")
