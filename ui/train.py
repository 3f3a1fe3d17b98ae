"""The Train tab: train a model from the browser, with a data check first and live status while it runs.

Events (each also an API endpoint): ``/check_data``, ``/train_start`` (data file first; every
other input has a default; returns the job id first), ``/train_status(job_id)`` (JSON with
``state``, ``progress``, ``message`` and, once finished, ``model``: the source ``/classify``
or ``/segment`` takes), ``/train_cancel(job_id)``, ``/train_resume(job_id)``, and
``/train_export(job_id, int8)`` ("Export for CPU": a new job that writes the model with its
network in ONNX, checked against PyTorch; returns its id first). The work happens in ``jobs/``:
every job is a CLI (training or export) in a process of its own.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
import matplotlib

matplotlib.use("Agg")  # no screen on a server
import matplotlib.pyplot as plt
import pandas as pd

from common.checkpoint_files import CONFUSION_MATRIX_PLOT, PREDICTIONS_PLOT, RELIABILITY_PLOT, TRAINING_CURVES_PLOT
from common.data_check import DataCheck
from jobs.commands import AUGMENTATION, CLASSIFIER, EXPORT, SEGMENTER, TASKS, Recipe
from jobs.intake import DataSourceError, server_folders
from jobs.service import REVIEWED, SERVER_FOLDER, SOURCES, ZIP, DataSource, TrainingJobs
from jobs.store import FINISHED, RESUMABLE, RUNNING, JobError
from ui.common import TabContext, segmenter_choices, user_facing

TAB_ID = "train"
OTHER_SPLIT = "other"
TICK_SECONDS = 2.0
LOG_LINES = 12
OFF = (
    "Training from the browser is off in this app. Start it with `python app.py` (or `make run`), which keeps jobs "
    "in the data folder; `--jobs-dir DIR` chooses another."
)
# The validation score drawn beside the losses: the first of these the run logged.
CURVE_METRICS = ("accuracy", "mAP", "mean_dice")
REPORT_FILES = (CONFUSION_MATRIX_PLOT, TRAINING_CURVES_PLOT, RELIABILITY_PLOT, PREDICTIONS_PLOT)


def build(context: TabContext) -> None:
    """The Train tab's components and events."""
    training: TrainingJobs | None = context.training
    with gr.Tab("Train", id=TAB_ID):
        if training is None:
            gr.Markdown(OFF)
            return
        _build(context, training)


def _build(context: TabContext, training: TrainingJobs) -> None:
    gr.Markdown(
        "Train a classifier or a defect segmenter on your own images. **1.** Choose the data and check it. "
        "**2.** Pick the model and recipe. **3.** Start: the job runs in a separate process, one at a time "
        "(others wait in the queue), and you can follow, cancel and resume it here, or leave and come back."
    )
    with gr.Row():
        with gr.Column():
            data_file = gr.File(
                file_types=[".zip"],
                type="filepath",
                label="Training data (.zip): one folder per class, optionally inside train/ validation/ test/; "
                "for defects, train.csv + train_images/ or images/ + masks/",
                elem_id="train-data",
            )
            source_kind = gr.Radio(
                [(label, key) for key, label in SOURCES.items()], value=ZIP, label="Data source", elem_id="train-source"
            )
            folders = server_folders(training.data_root)
            server_folder = gr.Dropdown(
                ["", *folders],
                value="",
                allow_custom_value=True,
                label=f"Folder under {training.data_root}" if training.data_root else "Folder on the server (off)",
                info=None if training.data_root else "Start the app with --train-data-root DIR to offer folders.",
                interactive=bool(training.data_root),
                elem_id="train-folder",
            )
            task = gr.Dropdown(
                [(label, key) for key, label in TASKS.items()], value=CLASSIFIER, label="Task", elem_id="train-task"
            )
            check_button = gr.Button("Check data", elem_id="train-check")
        with gr.Column():
            check_summary = gr.Markdown(elem_id="train-check-summary")
            thumbnails = gr.Gallery(label="A few images per class", columns=6, height=220, elem_id="train-thumbnails")
            with gr.Accordion("Data check (JSON)", open=False):
                check_json = gr.JSON()

    with gr.Row():
        with gr.Column():
            gr.Markdown("**Model and recipe** (the defaults reached the benchmark goals on parts and digits)")
            base_model = gr.Dropdown(
                _base_models(context),
                value="",
                allow_custom_value=True,
                label="Start from",
                info="Blank: the task's default (EfficientNet-Lite0 for classifiers, SegFormer b0 for defects).",
                elem_id="train-base-model",
            )
            with gr.Row():
                epochs = gr.Number(5, label="Epochs", minimum=0.1, elem_id="train-epochs")
                image_size = gr.Textbox(
                    "", label="Image size (HEIGHTxWIDTH)", placeholder="the model's own", elem_id="train-image-size"
                )
                learning_rate = gr.Number(1e-3, label="Learning rate", minimum=0)
            with gr.Row():
                augmentation = gr.Dropdown(list(AUGMENTATION), value="light", label="Augmentation")
                seed = gr.Number(0, label="Seed", precision=0, minimum=0)
            with gr.Row():
                balance = gr.Checkbox(False, label="Balance classes (draw rare classes as often as common ones)")
                use_other = gr.Checkbox(True, label="Use other/ images for the 'unknown' answer")
            with gr.Accordion("Advanced: more training flags", open=False):
                advanced = gr.Textbox(
                    "",
                    label="Flags of python -m train.classification.train / train.segmentation.train",
                    placeholder="--weight_decay 0.01 --warmup_steps 20",
                    info="Checked by the training command's own parser before the job starts.",
                    elem_id="train-advanced",
                )
            start_button = gr.Button("Start training", variant="primary", elem_id="train-start")
        with gr.Column():
            job = gr.Dropdown(
                _job_choices(training), value=None, allow_custom_value=True, label="Job", elem_id="train-job"
            )
            status = gr.HTML(elem_id="train-status")
            with gr.Row():
                cancel_button = gr.Button("Cancel", elem_id="train-cancel")
                resume_button = gr.Button("Resume", elem_id="train-resume")
            curves = gr.Plot(label="Loss and validation metrics", elem_id="train-curves")
            log = gr.Textbox(label="Last log lines", lines=6, max_lines=LOG_LINES, interactive=False)
            with gr.Accordion("Status (JSON)", open=False):
                status_json = gr.JSON()
    with gr.Row():
        with gr.Column():
            model_zip = gr.File(label="Download model", elem_id="train-model-zip")
            export_int8 = gr.Checkbox(
                False,
                label="int8 (smaller and faster; refused if it answers differently from float32 too often)",
                elem_id="train-export-int8",
            )
            export_button = gr.Button(
                "Export for CPU (ONNX, checked against PyTorch on the job's test images)", elem_id="train-export"
            )
        report = gr.Gallery(label="Report of the finished model", columns=4, height=260, elem_id="train-report")
    jobs_table = gr.Dataframe(_jobs_table(training), label="Jobs", interactive=False, elem_id="train-jobs")
    timer = gr.Timer(TICK_SECONDS)
    # What this page shows already (job view, jobs list, number of models): a tick sends only what changed.
    # The model counts start at those the page was built with: a page opened (or reloaded) after a job
    # finished gets the longer lists on its first tick.
    shown = gr.State({"models": len(context.registry.choices), "segmenters": len(context.segmenter.choices)})

    def check_data(data, task=CLASSIFIER, source=ZIP, server_folder="", use_other=True):
        """Check the training data: (summary, thumbnails, the check as JSON)."""
        result = training.check_data(_source(data, source, server_folder), task, use_other=use_other)
        return check_markdown(result), _thumbnail_items(result), result.to_dict()

    def train_start(data, task=CLASSIFIER, base_model="", epochs=5, image_size="", learning_rate=1e-3,
                    augmentation="light", balance_classes=False, use_other=True, seed=0, advanced="", source=ZIP,
                    server_folder=""):  # fmt: skip
        """Check the data and the command, queue a training job: (job id, its status as JSON)."""
        recipe = Recipe(
            task=task, base_model=base_model or "", epochs=epochs, image_size=image_size or "",
            learning_rate=learning_rate, augmentation=augmentation, balance_classes=balance_classes,
            use_other=use_other, seed=seed, advanced=advanced or "",
        )  # fmt: skip
        started = training.start(_source(data, source, server_folder), recipe)
        return started.id, training.status(started.id)

    def train_status(job_id):
        """The job's status as JSON (state, progress in [0, 1], message, and model once finished)."""
        return training.status(_job_id(job_id))

    def train_export(job_id, int8=False):
        """Export a finished job's model for CPU serving (ONNX, int8 if asked) as a new job: (its id, its status)."""
        exported = training.export(_job_id(job_id), int8=bool(int8))
        return exported.id, training.status(exported.id)

    def train_cancel(job_id):
        """Cancel a running job (its last checkpoint is kept) or a queued one; returns its status."""
        return training.status(training.cancel(_job_id(job_id)).id)

    def train_resume(job_id):
        """Resume a cancelled, failed or interrupted job from its last checkpoint; returns its status."""
        return training.status(training.resume(_job_id(job_id)).id)

    def refresh(job_id, seen):
        """What changed since the last tick: the selected job, the jobs list, the model lists of every tab."""
        seen = dict(seen or {})
        view_key, jobs_key = _view_key(training, job_id), _jobs_key(training)
        outputs = _job_view(training, job_id) if view_key != seen.get("view") else [gr.skip()] * len(view)
        if jobs_key != seen.get("jobs"):
            outputs += [gr.update(choices=_job_choices(training)), _jobs_table(training)]
        else:
            outputs += [gr.skip(), gr.skip()]
        for key, choices, dropdowns in (
            ("models", [(c.label, c.source) for c in context.registry.choices], context.model_dropdowns),
            ("segmenters", segmenter_choices(context.segmenter), context.segmenter_dropdowns),
        ):
            changed = len(choices) != seen.get(key)
            outputs += [gr.update(choices=choices) if changed else gr.skip() for _ in dropdowns]
            seen[key] = len(choices)
        seen.update(view=view_key, jobs=jobs_key)
        return [*outputs[: len(view) + 2], seen, *outputs[len(view) + 2 :]]

    view = [status, curves, log, model_zip, report, cancel_button, resume_button, export_button]
    check_button.click(
        guarded(check_data),
        [data_file, task, source_kind, server_folder, use_other],
        [check_summary, thumbnails, check_json],
        api_name="check_data",
    )
    start_button.click(
        guarded(train_start),
        [
            data_file,
            task,
            base_model,
            epochs,
            image_size,
            learning_rate,
            augmentation,
            balance,
            use_other,
            seed,
            advanced,
            source_kind,
            server_folder,
        ],  # fmt: skip
        [job, status_json],
        api_name="train_start",
    )
    status_button = gr.Button("Status", visible=False)
    status_button.click(guarded(train_status), job, status_json, api_name="train_status")
    cancel_button.click(guarded(train_cancel), job, status_json, api_name="train_cancel")
    export_button.click(guarded(train_export), [job, export_int8], [job, status_json], api_name="train_export")
    resume_button.click(guarded(train_resume), job, status_json, api_name="train_resume")
    refresh_outputs = [*view, job, jobs_table, shown, *context.model_dropdowns, *context.segmenter_dropdowns]
    timer.tick(refresh, [job, shown], refresh_outputs, api_name=False, show_progress="hidden")
    job.change(refresh, [job, shown], refresh_outputs, api_name=False, show_progress="hidden")


def guarded(handler):
    """``user_facing`` plus the Train tab's own errors, as one sentence in the UI.

    ``functools.wraps`` keeps the handler's signature, from which the API takes its parameter
    names and defaults (``/train_start``'s inputs after the data file are all optional).
    """

    def translated(*args):
        try:
            return handler(*args)
        except (JobError, DataSourceError) as error:
            raise gr.Error(str(error), print_exception=False) from None

    translated.__name__ = handler.__name__
    return functools.wraps(handler)(user_facing(translated))


def _source(data, kind, folder) -> DataSource:
    if kind == SERVER_FOLDER:
        return DataSource(SERVER_FOLDER, folder)
    if kind == REVIEWED:
        return DataSource(REVIEWED)
    path = data.get("path") if isinstance(data, dict) else data
    return DataSource(ZIP, path)


def _job_id(value) -> str:
    if not value:
        raise JobError("No job chosen: start one, or pick one from the Job list.")
    return str(value).strip()


def _base_models(context: TabContext) -> list[tuple[str, str]]:
    classifiers = [(f"classifier: {choice.label}", choice.source) for choice in context.registry.choices]
    # Fine-tuning a served segmenter (its stage 1 is not retrained) or starting a new one.
    segmenters = [(f"segmenter: {c.label}", c.source) for c in context.segmenter.choices if c.source]
    return [("(the task's default)", ""), *classifiers, *segmenters, ("segmenter: SegFormer b0 from scratch", "b0")]


def _job_choices(training: TrainingJobs) -> list[tuple[str, str]]:
    return [(f"{job.id}: {job.data} ({job.state})", job.id) for job in training.manager.jobs()]


def _jobs_table(training: TrainingJobs) -> pd.DataFrame:
    rows = []
    for job in training.manager.jobs():
        progress = training.manager.progress(job.id)
        rows.append({
            "job": job.id, "state": job.state, "task": job.task, "data": job.data,
            "progress": f"{progress.fraction:.0%}", "runs": job.runs, "message": job.message,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["job", "state", "task", "data", "progress", "runs", "message"])


def _job_view(training: TrainingJobs, job_id) -> list:
    """(status HTML, curves, log, model zip, report images, cancel, resume and export buttons) of one job."""
    if not job_id:
        idle = "<p>No job selected. Check your data, then start training.</p>"
        return [idle, None, "", None, [], *[gr.update(interactive=False)] * 3]
    try:
        status = training.status(str(job_id))
    except JobError as error:
        return [f"<p>{_escape(str(error))}</p>", None, "", None, [], gr.update(), gr.update(), gr.update()]
    progress = training.manager.progress(status["job_id"])
    finished = status["state"] == FINISHED
    model_zip = str(training.model_zip(status["job_id"])) if finished else None
    report = _report_items(Path(status["model"])) if finished else []
    lines = "\n".join(training.manager.log_lines(status["job_id"], LOG_LINES))
    can_cancel = status["state"] in (RUNNING, "queued")
    return [
        status_html(status),
        curves_figure(progress),
        lines,
        model_zip,
        report,
        gr.update(interactive=can_cancel),
        gr.update(interactive=status["state"] in RESUMABLE),
        gr.update(interactive=finished and status["task"] != EXPORT),
    ]


def status_html(status: dict) -> str:
    """A progress bar with the state, phase, ETA and message of one job."""
    eta = status.get("eta_seconds")
    eta_text = f" · about {_duration(eta)} left" if eta else ""
    percent = status["progress"] * 100
    model = f"<br>Model: <code>{status['model']}</code> (now in every model list)" if status.get("model") else ""
    return (
        f"<div id='train-state' data-state='{status['state']}'><b>{status['job_id']}: {status['state']}</b>"
        f" · {percent:.0f}%{eta_text}</div>"
        f"<progress max='100' value='{percent:.1f}' style='width:100%'></progress>"
        f"<div>{_escape(status['message'])}{model}</div>"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _escape(text: str) -> str:
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def curves_figure(progress):
    """Training loss and the validation metrics against the step, as the run logged them (None before any)."""
    if not progress.losses and not progress.evaluations:
        return None
    figure, loss_axis = plt.subplots(figsize=(6, 2.6), layout="constrained")
    if progress.losses:
        loss_axis.plot(*zip(*progress.losses, strict=True), marker="o", label="training loss", color="tab:blue")
    evaluations = progress.evaluations
    validation_loss = [(step, scores["loss"]) for step, scores in evaluations if "loss" in scores]
    if validation_loss:
        loss_axis.plot(*zip(*validation_loss, strict=True), marker="o", label="validation loss", color="tab:orange")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    metric = next((name for name in CURVE_METRICS if any(name in scores for _, scores in evaluations)), None)
    if metric:
        metric_axis = loss_axis.twinx()  # a 0-1 score beside a loss of any size
        points = [(step, scores[metric]) for step, scores in evaluations if metric in scores]
        metric_axis.plot(*zip(*points, strict=True), marker="s", color="tab:green", label=f"validation {metric}")
        metric_axis.set_ylabel(metric)
        metric_axis.set_ylim(0, 1.02)
        metric_axis.legend(loc="upper right", fontsize=8)
    loss_axis.legend(loc="upper left", fontsize=8)
    plt.close(figure)  # gr.Plot renders it; pyplot need not keep it
    return figure


def _view_key(training: TrainingJobs, job_id) -> tuple:
    if not job_id:
        return (None,)
    try:
        job = training.manager.get(str(job_id))
    except JobError:
        return (str(job_id), "unknown")
    progress = training.manager.progress(job.id)
    log = training.manager.store.log_file(job.id)
    log_size = log.stat().st_size if log.exists() else 0
    return (job.id, job.state, job.message, progress.phase, progress.step, len(progress.evaluations), log_size)


def _jobs_key(training: TrainingJobs) -> tuple:
    jobs = training.manager.jobs()
    return tuple((job.id, job.state, job.message, round(training.manager.progress(job.id).fraction, 2)) for job in jobs)


def _report_items(model_dir: Path) -> list[tuple[str, str]]:
    return [(str(model_dir / name), name) for name in REPORT_FILES if (model_dir / name).is_file()]


def _thumbnail_items(check: DataCheck) -> list[tuple[str, str]]:
    return [(str(path), label) for label, paths in check.thumbnails.items() for path in paths]


def check_markdown(check: DataCheck) -> str:
    """The data check in words: verdict, layout, counts per split and class, sizes, problems."""
    verdict = "**Ready to train.**" if check.can_train else "**Cannot train on this data:**"
    lines = [verdict]
    lines += [f"- {refusal}" for refusal in check.refusals]
    lines.append(f"\nLayout: {check.layout}.")
    # other/ (images of none of the classes) is said in a warning, not as a class of the table.
    splits = [split for split in check.counts if split != OTHER_SPLIT]
    classes = sorted({name for split in splits for name in check.counts[split]})
    if classes:
        lines.append("\n| class | " + " | ".join(splits) + " |")
        lines.append("|---" * (len(splits) + 1) + "|")
        lines += [
            f"| {name} | " + " | ".join(str(check.counts[split].get(name, 0)) for split in splits) + " |"
            for name in classes
        ]
    if check.image_sizes:
        sizes = ", ".join(f"{size} ({count})" for size, count in list(check.image_sizes.items())[:5])
        lines.append(f"\nImage sizes: {sizes}{' ...' if len(check.image_sizes) > 5 else ''}.")
    if check.unreadable:
        shown = "; ".join(f"`{path}`: {reason}" for path, reason in check.unreadable[:5])
        lines.append(f"\n**{len(check.unreadable)} unreadable file(s)** (left out of training): {shown}")
    if check.duplicates:
        shown = "; ".join(f"`{a}` = `{b}`" for a, b in check.duplicates[:5])
        lines.append(f"\n**{len(check.duplicates)} image(s) in two splits** (inflates the test score): {shown}")
    lines += [f"\n_Note:_ {warning}" for warning in check.warnings]
    if check.task == SEGMENTER and not check.refusals:
        lines.append("\nThe segmenter trains from scratch (SegFormer b0) unless you start from a checkpoint.")
    return "\n".join(lines)
