"""Gradio app: classify images, outline defects and inspect the models behind the answers.

Arguments, model sources and launch only; the tabs are built in ``ui/``. ``demo`` is built at
import without loading any model or starting a server, so tests can import and launch it.

    python app.py [--classifier DIR_OR_HUB_ID ...] [--segmenter DIR [--stage1 DIR]] [--runtime auto|torch|onnx]
                  [--share] [--port 7860] [--api-key KEY] [--log-db URL|off] [--store-images]
                  [--jobs-dir DIR] [--train-data-root DIR] [--train-jobs N] [--max-train-zip-mb MB]

Beside the page and Gradio's API, the same server answers the REST API in ``api/`` (``/api/v1``).
Every decision (every tab, every REST answer) is recorded in the inspection log
(``common/inspection_log.py``), which the History tab and ``/api/v1/inspections`` read.
The Train tab's jobs (``jobs/``) run the training CLIs as processes and keep a folder each in
``--jobs-dir``; a finished classifier joins every model list at once.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys

import gradio as gr
from fastapi import APIRouter

from api import API_KEY_ENV, ApiLimits, create_api_router, gradio_app_kwargs
from common.checkpoints import ModelLoadError, resolve_checkpoint
from common.image_io import MAX_FILE_BYTES
from common.inspection_log import DATA_ENV, IMAGES_FOLDER, InspectionLog, InspectionLogError, data_dir, default_url
from jobs.commands import EXPORT, SEGMENTER
from jobs.manager import JobManager
from jobs.service import TrainingJobs
from jobs.store import Job, JobError
from pipelines.anomaly_detection.registry import AnomalyDetectors
from pipelines.registry import (
    PROJECT_MODELS_DIR,
    ClassifierRegistry,
    LazySegmenter,
    SegmenterRegistry,
    is_classifier_checkpoint,
)
from pipelines.runtime import RUNTIME_HELP, RUNTIMES
from ui import TITLE, build_demo

LOG_OFF = "off"
JOBS_FOLDER = "jobs"
MAX_TRAIN_ZIP_BYTES = 4 * 1024**3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"{TITLE}: classify, explain and outline defects in a Gradio app.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for your network)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link (needs internet)")
    parser.add_argument(
        "--classifier",
        action="append",
        default=[],
        metavar="DIR_OR_HUB_ID",
        help="extra classifier checkpoint to offer (repeatable; exported directories too); checkpoints in "
        "--models-dir are found automatically",
    )
    parser.add_argument(
        "--models-dir",
        default=str(PROJECT_MODELS_DIR),
        help="folder with the demo models and extra classifier checkpoints (default: models/ beside app.py)",
    )
    parser.add_argument("--segmenter", help="defect segmentation checkpoint (default: models/steel-segformer)")
    parser.add_argument(
        "--anomaly-model",
        action="append",
        default=[],
        metavar="DIR",
        help="anomaly detector folder (python -m train.anomaly_detection) for the Anomaly tab (repeatable); "
        "models/steel-anomaly is offered automatically",
    )
    parser.add_argument("--stage1", help="with --segmenter: its stage-1 'which defects are present' classifier")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help=f"for every model, {RUNTIME_HELP}")
    parser.add_argument("--max-file-mb", type=float, default=MAX_FILE_BYTES / 2**20, help="upload size limit in MB")
    parser.add_argument("--queue-size", type=int, default=64, help="requests that may wait before new ones are refused")
    parser.add_argument("--concurrency", type=int, default=2, help="requests processed at the same time")
    parser.add_argument(
        "--api-key",
        help=f"require this key (X-API-Key header or 'Authorization: Bearer') on the REST API's classify, "
        f"segment and inspections routes (default: ${API_KEY_ENV}; without either, the REST API is open)",
    )
    parser.add_argument(
        "--log-db",
        metavar="URL",
        help=f"where decisions are recorded: an SQLAlchemy URL (sqlite:////path/inspections.db, "
        f"postgresql+psycopg://user:password@host/database) or 'off' to record nothing (default: "
        f"{default_url()}, under ${DATA_ENV} when set)",
    )
    parser.add_argument(
        "--store-images",
        action="store_true",
        help=f"also keep each decided image, once per content, in {data_dir() / IMAGES_FOLDER} (default off: the "
        "log holds hashes, not pictures)",
    )
    parser.add_argument(
        "--jobs-dir",
        help=f"where the Train tab keeps its jobs (data, logs, models; default {data_dir() / JOBS_FOLDER}, "
        f"under ${DATA_ENV} when set)",
    )
    parser.add_argument(
        "--train-data-root",
        metavar="DIR",
        help="let the Train tab train on folders under DIR on this server (default: uploaded zips only)",
    )
    parser.add_argument("--train-jobs", type=int, default=1, help="training jobs that run at the same time (default 1)")
    parser.add_argument(
        "--max-train-zip-mb",
        type=float,
        default=MAX_TRAIN_ZIP_BYTES / 2**20,
        help="size limit of a training-data zip uploaded to the Train tab, in MB (images stay at --max-file-mb)",
    )
    args = parser.parse_args(argv)
    args.api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    for flag, value, low in (
        ("--port", args.port, 1),
        ("--queue-size", args.queue_size, 1),
        ("--concurrency", args.concurrency, 1),
        ("--train-jobs", args.train_jobs, 1),
    ):
        if value < low:
            parser.error(f"{flag} must be at least {low}, got {value}")
    if args.max_file_mb <= 0 or args.max_train_zip_mb <= 0:
        parser.error(
            f"--max-file-mb and --max-train-zip-mb must be positive, got {args.max_file_mb}, {args.max_train_zip_mb}"
        )
    if args.train_data_root and not os.path.isdir(args.train_data_root):
        parser.error(f"--train-data-root {args.train_data_root} is not a folder; create it or name another")
    if args.store_images and args.log_db == LOG_OFF:
        parser.error("--store-images needs the log: drop --log-db off, or drop --store-images")
    if args.stage1 and not args.segmenter:
        parser.error("--stage1 goes with --segmenter: name the segmenter it belongs to (e.g. models/steel-segformer)")
    return args


def open_inspection_log(args: argparse.Namespace) -> InspectionLog | None:
    """The log ``--log-db`` names (the default SQLite file without it); None for ``off``, said once on stderr.

    Raises:
        InspectionLogError: the database cannot be opened or written; the message names it and the fix.
    """
    if args.log_db == LOG_OFF:
        print(
            "The inspection log is off (--log-db off): decisions are not recorded and the History tab is empty.",
            file=sys.stderr,
            flush=True,
        )
        return None
    return InspectionLog.open(args.log_db, store_images=args.store_images)


def open_training_jobs(
    args: argparse.Namespace,
    registry: ClassifierRegistry,
    inspection_log: InspectionLog | None,
    segmenters: SegmenterRegistry | None = None,
) -> TrainingJobs:
    """The Train tab's jobs in ``--jobs-dir``; every finished classifier joins ``registry``, segmenter ``segmenters``.

    Running jobs are stopped with a checkpoint when the app exits, and offered for resuming after.

    Raises:
        JobError: the jobs folder cannot be created.
    """

    def offer(job: Job) -> None:
        model_dir = manager.store.model_dir(job.id)
        label = f"{job.id}: {job.data}" if job.task == EXPORT else f"{job.id}: trained on {job.data}"
        # An export is of either kind: its config says which.
        is_segmenter = job.task == SEGMENTER or (job.task == EXPORT and not is_classifier_checkpoint(model_dir))
        if not is_segmenter:
            registry.add(label, str(model_dir))
        elif segmenters is not None:
            segmenters.add(label, str(model_dir))

    manager = JobManager(args.jobs_dir or data_dir() / JOBS_FOLDER, max_running=args.train_jobs, on_finished=offer)
    atexit.register(manager.close)
    return TrainingJobs(manager, data_root=args.train_data_root, inspection_log=inspection_log)


def launch_app(
    demo: gr.Blocks, args: argparse.Namespace, prevent_thread_lock: bool = False, rest_api: APIRouter | None = None
):
    """Queue and launch ``demo``, with the ``rest_api`` routes beside it; offline, ``--share`` serves locally."""
    demo.queue(max_size=args.queue_size, default_concurrency_limit=args.concurrency)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        # Gradio has one cap for every upload: the larger one, for training zips. Image tabs and
        # the REST API apply --max-file-mb themselves, to each file.
        max_file_size=int(max(args.max_file_mb, args.max_train_zip_mb) * 2**20),
        show_error=True,
        prevent_thread_lock=True,
        app_kwargs=gradio_app_kwargs(rest_api) if rest_api is not None else None,
    )
    if rest_api is not None and not args.api_key:
        print(
            f"The REST API ({demo.local_url}api/v1, docs at /docs) is open: no API key is set. "
            f"Start with --api-key KEY or {API_KEY_ENV}=KEY to require one.",
            file=sys.stderr,
            flush=True,
        )
    if args.share and not demo.share_url:
        print(
            f"No public share link could be created (no internet connection to Gradio's share servers); "
            f"the app keeps serving locally at {demo.local_url}",
            file=sys.stderr,
            flush=True,
        )
    if not prevent_thread_lock:
        demo.block_thread()
    return demo


registry = ClassifierRegistry.from_sources()
demo = build_demo(registry, LazySegmenter.from_models_dir(), anomaly_detectors=AnomalyDetectors.from_sources())

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cli = parse_args()
    try:
        # First, so that a database that is down stops the app before models take minutes to load.
        inspection_log = open_inspection_log(cli)
    except InspectionLogError as error:
        sys.exit(f"error: {error}")
    try:
        for source in cli.classifier:
            resolve_checkpoint(source)  # a mistyped path fails now, not at the first request
        registry = ClassifierRegistry.from_sources(cli.classifier, models_dir=cli.models_dir, runtime=cli.runtime)
        registry.get()  # load (and on first run, convert and export) the default model before serving
        anomaly_detectors = AnomalyDetectors.from_sources(
            cli.anomaly_model, models_dir=cli.models_dir, runtime=cli.runtime
        )
        anomaly_detectors.check()  # a mistyped --anomaly-model fails now, not at the first request
    except ModelLoadError as error:
        sys.exit(f"error: {error}")
    segmenter_source = (
        LazySegmenter(cli.segmenter, cli.stage1, runtime=cli.runtime)
        if cli.segmenter
        else LazySegmenter.from_models_dir(cli.models_dir, runtime=cli.runtime)
    )
    try:
        segmenters = SegmenterRegistry(segmenter_source)
        training = open_training_jobs(cli, registry, inspection_log, segmenters)
    except JobError as error:
        sys.exit(f"error: {error}")
    max_file_bytes = int(cli.max_file_mb * 2**20)
    demo = build_demo(
        registry,
        segmenters,
        max_file_bytes=max_file_bytes,
        inspection_log=inspection_log,
        training=training,
        anomaly_detectors=anomaly_detectors,
    )
    limits = ApiLimits(max_file_bytes=max_file_bytes, concurrency=cli.concurrency)
    rest_api = create_api_router(registry, segmenter_source, limits, cli.api_key, inspection_log=inspection_log)
    launch_app(demo, cli, rest_api=rest_api)
