"""The Inspect tab: many images (or zips of them) at once, classified, searched for defects or for anomalies.

The pipelines do the work in batches (``classify_files``, ``segment_files``, ``detect_files``)
and decide what is flagged (``needs_review``); this tab checks the upload caps, tracks progress
per batch, words the answers and writes the downloads with the pipelines' writers.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image

from common.archives import ArchiveError, ArchiveLimits
from common.image_io import load_image
from common.inspection_log import Decision, InspectionLog
from common.rle import SUBMISSION_HEADER
from pipelines.anomaly_detection import AnomalyDetector, detect_files, write_results_csv
from pipelines.anomaly_detection.render import anomaly_overlay
from pipelines.classification import (
    Classification,
    classify_files,
    write_predictions_csv,
    write_predictions_json,
)
from pipelines.classification import needs_review as classification_needs_review
from pipelines.decisions import ANOMALY_MARGIN, anomaly_decision, classification_decision, segmentation_decision
from pipelines.image_files import ImageFile, collect_image_files
from pipelines.segmentation import (
    Segmentation,
    defect_confidence,
    overlay_masks,
    segment_files,
    segmentation_record,
    submission_rows,
    write_records_csv,
    write_records_json,
)
from pipelines.segmentation.records import needs_review as segmentation_needs_review
from ui.common import TabContext, user_facing

TAB_ID = "inspect"
CLASSIFY, FIND_DEFECTS, FIND_ANOMALIES = "classify", "find defects", "find anomalies"
TASKS = (CLASSIFY, FIND_DEFECTS, FIND_ANOMALIES)
# Above this, one request would hold a worker for many minutes; the CLIs take any number.
MAX_IMAGES_PER_BATCH = 1000
DEFAULT_BATCH_SIZE = 16
# Classes kept per image in the downloads (the table shows the first).
TOP_K = 3
# The gallery shows this many flagged images at most; the table and downloads have every row.
GALLERY_LIMIT = 48
THUMBNAIL_SIDE = 512
EXAMPLE_BATCH = Path(__file__).resolve().parents[1] / "examples" / "inspect" / "parts-and-others.zip"

CLASSIFY_COLUMNS = ["file", "answer", "confidence", "unknown", "flagged", "error"]
DEFECT_COLUMNS = ["file", "answer", "confidence", "defective", "defect types (area %)", "flagged", "error"]
ANOMALY_COLUMNS = ["file", "product", "answer", "score (× threshold)", "anomalous area %", "flagged", "error"]

Progress = Callable[..., object] | None
# Gradio finds the progress tracker by a parameter whose default is a gr.Progress and routes its
# updates to the request running it, so one shared default serves every request.
TRACK_PROGRESS = gr.Progress()


@dataclass(frozen=True)
class Inspection:
    """What one run shows: a sentence, the table, the flagged images, counts per answer and the downloads."""

    summary: str
    table: pd.DataFrame
    gallery: list[tuple[str, str]]
    counts: pd.DataFrame
    downloads: list[str]

    def outputs(self) -> tuple:
        return self.summary, self.table, self.gallery, self.counts, self.downloads


class BatchLog:
    """A run's decisions, written to the inspection log one batch (one transaction) at a time.

    With the log off it does nothing, not even read the image bytes.
    """

    def __init__(self, log: InspectionLog | None, batch_size: int):
        self.log = log
        self.batch_size = batch_size
        self.pending: list[tuple[Decision, bytes]] = []
        self.ids: list[int] = []

    def add(self, file: ImageFile, decide: Callable[..., Decision]) -> None:
        """Queue ``decide(image bytes, channel=..., file_name=...)``, the decision on ``file``; a full batch is written.

        Raises:
            common.inspection_log.InspectionLogError: the log cannot be written; the run must fail.
        """
        if self.log is None:
            return
        image = file.path.read_bytes()
        self.pending.append((decide(image, channel=TAB_ID, file_name=file.name), image))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.ids += self.log.record_many(self.pending)
            self.pending = []

    def note(self) -> str:
        """Where the run was logged, for the summary ("" when the log is off or nothing was logged)."""
        if not self.ids:
            return ""
        if len(self.ids) == 1:
            return f" Logged as inspection #{self.ids[0]}."
        return f" Logged as {len(self.ids)} inspections, #{self.ids[0]} to #{self.ids[-1]}."


def upload_paths(uploads) -> list[str]:
    """The files behind a ``gr.File(file_count="multiple")`` value (paths, or dicts from the API)."""
    if not uploads:
        return []
    items = uploads if isinstance(uploads, list) else [uploads]
    return [
        item if isinstance(item, str) else (item.get("path") if isinstance(item, dict) else item.name) for item in items
    ]


def gather_images(paths: Sequence[str], folder: Path, max_file_bytes: int) -> list[ImageFile]:
    """The images of an upload (zips unpacked into ``folder``), within the per-file and per-batch caps.

    Raises:
        gr.Error: no files, a file over the byte limit, a refused archive, or too many images.
    """
    if not paths:
        raise gr.Error("No images yet: upload images, or .zip archives of images, first.", print_exception=False)
    names = [Path(path).name for path in paths]  # uploads keep their file name; never show the server's folder
    for path, name in zip(paths, names):
        size = os.stat(path).st_size
        if size > max_file_bytes:
            raise gr.Error(
                f"'{name}' is {size / 2**20:.1f} MB, over the {max_file_bytes / 2**20:.1f} MB limit per file; "
                "split it into smaller files.",
                print_exception=False,
            )
    try:
        files = collect_image_files(
            paths, extract_to=folder, limits=ArchiveLimits(max_member_bytes=max_file_bytes), display_names=names
        )
    except ArchiveError as error:
        raise gr.Error(f"Cannot open the archive: {error}.", print_exception=False) from None
    if not files:
        raise gr.Error("The upload holds no images (only folders or hidden files).", print_exception=False)
    if len(files) > MAX_IMAGES_PER_BATCH:
        raise gr.Error(
            f"The upload holds {len(files):,} images, over the limit of {MAX_IMAGES_PER_BATCH:,} per run; "
            f"inspect them in batches of {MAX_IMAGES_PER_BATCH:,} or fewer, or use the command line "
            "(python -m pipelines.classification / pipelines.segmentation), which takes any number.",
            print_exception=False,
        )
    return files


def _report(progress: Progress, done: int, total: int, batch_size: int) -> None:
    """Move the progress bar once per batch (and at the end)."""
    if progress is not None and (done % batch_size == 0 or done == total):
        progress((done, total), desc="images", unit="images")


def _thumbnail(image: Image.Image, out: Path) -> str:
    picture = image.copy()
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    picture.save(out, format="JPEG", quality=85)
    return str(out)


def _keep_flagged(gallery: list, flag: str, file: ImageFile, caption: str, out: Path, draw=None, answer=None) -> None:
    """A flagged image into the gallery as a thumbnail (``draw(image, answer)`` over it), while there is room.

    The image is read (and drawn on) only then: a run of a thousand flagged images keeps 48.
    """
    if flag and len(gallery) < GALLERY_LIMIT:
        picture = load_image(file.path)
        gallery.append((_thumbnail(picture if draw is None else draw(picture, answer), out), caption))


def _short_error(error: str, file: ImageFile) -> str:
    """The loader's reason without the "Cannot read image 'name':" that the file column already says."""
    return error.removeprefix(f"Cannot read image '{file.name}': ")


def _share_table(counts: Counter, total: int, column: str) -> pd.DataFrame:
    rows = [[answer, count, round(100 * count / total, 1)] for answer, count in counts.most_common()]
    return pd.DataFrame(rows, columns=[column, "images", "share %"])


def classification_answer(result: Classification) -> str:
    """The answer a person reads: the best class, or that the image looks like none of them."""
    best = result.predictions[0].label
    return f"unknown (closest: {best})" if result.unknown else best


def classification_flag(result: Classification | None, error: str | None, min_confidence: float) -> str:
    """Why a row needs a look ("" when it does not); the rule is the pipeline's ``needs_review``."""
    if not classification_needs_review(result, error, min_confidence):
        return ""
    if error or result is None:
        return "unreadable"
    if result.unknown:
        return "unknown"
    return f"below {min_confidence:.0%}"


def inspect_classification(
    context: TabContext,
    files: Sequence[ImageFile],
    model: str,
    min_confidence: float,
    batch_size: int,
    out: Path,
    progress: Progress = None,
) -> Inspection:
    """Classify every file in batches: the rows, the flagged images with captions, counts and downloads."""
    classifier = context.registry.get(model)
    rows, table, gallery, counts, flagged = [], [], [], Counter(), Counter()
    logged = BatchLog(context.inspection_log, batch_size)
    started = time.perf_counter()
    stream = classify_files(
        classifier, files, top_k=TOP_K, batch_size=batch_size, progress=False, max_bytes=context.max_file_bytes
    )
    for index, (file, result, error) in enumerate(stream):
        rows.append((file, result, error))
        flag = classification_flag(result, error, min_confidence)
        if result is None:
            counts["unreadable"] += 1
            table.append([file.name, "", None, "", flag, _short_error(error, file)])
        else:
            logged.add(file, partial(classification_decision, result, classifier, low_confidence=min_confidence))
            best = result.predictions[0]
            counts["unknown" if result.unknown else best.label] += 1
            table.append([file.name, classification_answer(result), round(best.score, 4),
                          "yes" if result.unknown else "", flag, ""])  # fmt: skip
            caption = f"{file.name}: {classification_answer(result)}, {best.score:.0%} ({flag})"
            _keep_flagged(gallery, flag, file, caption, out / f"{index:04d}.jpg")
        if flag:
            flagged[flag] += 1
        _report(progress, index + 1, len(files), batch_size)
    logged.flush()
    seconds = time.perf_counter() - started
    downloads = [out / "inspection.csv", out / "inspection.json"]
    with downloads[0].open("w", newline="") as handle:
        write_predictions_csv(rows, handle, TOP_K, min_confidence=min_confidence, report_errors=False)
    with downloads[1].open("w") as handle:
        write_predictions_json(rows, handle, min_confidence=min_confidence)
    trust = (
        "Confidences are calibrated on the model's validation data."
        if classifier.trust.calibrated
        else "This model is not calibrated: read confidences as a ranking, not as probabilities."
    )
    summary = _summary(len(files), seconds, flagged, min_confidence) + f" {trust}" + logged.note()
    return Inspection(
        summary,
        pd.DataFrame(table, columns=CLASSIFY_COLUMNS),
        gallery,
        _share_table(counts, len(files), "answer"),
        [str(path) for path in downloads],
    )


def defect_answer(segmentation: Segmentation) -> tuple[str, str]:
    """("defective" or "clean", the defect types with their areas) as a person reads them."""
    found = [region for region in segmentation.regions if region.present]
    areas = ", ".join(f"{region.label} {100 * region.area_fraction:.2f}%" for region in found)
    return ("defective" if found else "clean"), areas


def defect_flag(segmentation: Segmentation | None, error: str | None, min_confidence: float) -> str:
    """Why a row needs a look ("" when it does not); the rule is the pipeline's ``needs_review``."""
    if not segmentation_needs_review(segmentation, error, min_confidence):
        return ""
    if error or segmentation is None:
        return "unreadable"
    if segmentation.defective:
        return "defective"
    return f"unsure, below {min_confidence:.0%}"


def inspect_defects(
    context: TabContext,
    files: Sequence[ImageFile],
    min_confidence: float,
    batch_size: int,
    out: Path,
    progress: Progress = None,
    segmenter_source: str | None = None,
) -> Inspection:
    """Find defects in every file: the rows, the flagged images with overlays, counts and downloads.

    The Kaggle RLE CSV is written as the images come (masks are not kept: they are large); an
    unreadable image gets no RLE rows, as empty ones would claim it is clean.
    """
    segmenter = context.segmenter.get(segmenter_source)
    labels = segmenter.defect_labels
    records, table, gallery, counts, flagged = [], [], [], Counter(), Counter()
    logged = BatchLog(context.inspection_log, batch_size)
    rle_path = out / "submission_rle.csv"
    started = time.perf_counter()
    with rle_path.open("w", newline="") as rle_handle:
        rle_writer = csv.writer(rle_handle)
        rle_writer.writerow(SUBMISSION_HEADER)
        stream = segment_files(
            segmenter, files, batch_size=batch_size, progress=False, max_bytes=context.max_file_bytes
        )
        for index, (file, segmentation, error) in enumerate(stream):
            records.append(segmentation_record(file, segmentation, error, min_confidence))
            flag = defect_flag(segmentation, error, min_confidence)
            if segmentation is None:
                counts["unreadable"] += 1
                table.append([file.name, "", None, "", "", flag, _short_error(error, file)])
            else:
                logged.add(file, partial(segmentation_decision, segmentation, segmenter, low_confidence=min_confidence))
                rle_writer.writerows(submission_rows(file.file_name, segmentation))
                answer, areas = defect_answer(segmentation)
                confidence = defect_confidence(segmentation)
                counts.update([region.label for region in segmentation.regions if region.present] or ["clean"])
                table.append([file.name, answer, None if confidence is None else round(confidence, 4),
                              "yes" if segmentation.defective else "", areas, flag, ""])  # fmt: skip
                caption = f"{file.name}: {areas or answer} ({flag})"
                _keep_flagged(gallery, flag, file, caption, out / f"{index:04d}.jpg", overlay_masks, segmentation)
            if flag:
                flagged[flag] += 1
            _report(progress, index + 1, len(files), batch_size)
    logged.flush()
    seconds = time.perf_counter() - started
    downloads = [out / "inspection.csv", out / "inspection.json", rle_path]
    with downloads[0].open("w", newline="") as handle:
        write_records_csv(records, handle, labels)
    with downloads[1].open("w") as handle:
        write_records_json(records, handle)
    counts_table = _share_table(counts, len(files), "defect type")
    counts_table = counts_table.rename(columns={"images": "images with it"})
    return Inspection(
        _summary(len(files), seconds, flagged, min_confidence) + logged.note(),
        pd.DataFrame(table, columns=DEFECT_COLUMNS),
        gallery,
        counts_table,
        [str(path) for path in downloads],
    )


def product_of(file: ImageFile, detector: AnomalyDetector) -> str:
    """The product whose bank scores ``file``: the detector's only one, or the nearest folder named after one.

    Raises:
        ValueError: a several-product detector and no folder of the file's path names one of them.
    """
    if len(detector.products) == 1:
        return detector.products[0]
    folders = file.name.replace("\\", "/").split("/")[:-1]
    for folder in reversed(folders):
        if folder in detector.products:
            return folder
    raise ValueError(
        f"this detector knows {len(detector.products)} products ({', '.join(detector.products)}); put the image in "
        "a folder named after its product (inside the zip)"
    )


def anomaly_flag(score: float | None, error: str | None) -> str:
    """Why a row needs a look: unreadable, anomalous, or a score too near the line to trust either way."""
    if error or score is None:
        return "unreadable"
    if score > 1.0:
        return "anomalous"
    return "near the line" if score >= 1.0 - ANOMALY_MARGIN else ""


def detect_by_product(detector: AnomalyDetector, files: Sequence[ImageFile], batch_size: int, max_bytes: int):
    """``(file, result, error)`` for every file, product by product (each scored against its own bank).

    Files whose product cannot be told come first, as rows with the reason.
    """
    groups: dict[str, list[ImageFile]] = {}
    for file in files:
        try:
            groups.setdefault(product_of(file, detector), []).append(file)
        except ValueError as error:
            yield file, None, f"Cannot score '{file.name}': {error}"
    for product, members in groups.items():
        yield from detect_files(
            detector, members, product=product, batch_size=batch_size, progress=False, max_bytes=max_bytes
        )


def inspect_anomalies(
    context: TabContext,
    files: Sequence[ImageFile],
    batch_size: int,
    out: Path,
    progress: Progress = None,
    detector_source: str | None = None,
) -> Inspection:
    """Score every file against the anomaly detector: rows, the anomalous images with their maps, counts, CSV."""
    from pipelines.anomaly_detection.registry import AnomalyDetectors

    detector = (context.anomaly_detectors or AnomalyDetectors()).get(detector_source or None)
    records, table, gallery, counts, flagged = [], [], [], Counter(), Counter()
    logged = BatchLog(context.inspection_log, batch_size)
    started = time.perf_counter()
    stream = detect_by_product(detector, files, batch_size, context.max_file_bytes)
    for index, (file, result, error) in enumerate(stream):
        records.append((file, result, error))
        flag = anomaly_flag(None if result is None else result.score, error)
        if result is None:
            counts["unreadable"] += 1
            table.append([file.name, "", "", None, None, flag, _short_error(error, file)])
        else:
            logged.add(file, partial(anomaly_decision, result, detector))
            answer = "anomalous" if result.anomalous else "good"
            counts[answer] += 1
            table.append([file.name, result.product, answer, round(result.score, 3),
                          round(100 * result.area_fraction, 3), flag, ""])  # fmt: skip
            caption = f"{file.name}: score {result.score:.2f} × threshold ({flag})"
            _keep_flagged(gallery, flag, file, caption, out / f"{index:04d}.jpg", anomaly_overlay, result)
        if flag:
            flagged[flag] += 1
        _report(progress, index + 1, len(files), batch_size)
    logged.flush()
    seconds = time.perf_counter() - started
    csv_path = out / "anomalies.csv"
    with csv_path.open("w", newline="") as handle:
        write_results_csv(records, handle)
    summary = _summary(len(files), seconds, flagged, None) + logged.note()
    return Inspection(
        summary, pd.DataFrame(table, columns=ANOMALY_COLUMNS), gallery, _share_table(counts, len(files), "answer"),
        [str(csv_path)],
    )  # fmt: skip


def _summary(total: int, seconds: float, flagged: Counter, min_confidence: float | None) -> str:
    """One sentence: how many images, how fast, and how many need a look and why."""
    count = sum(flagged.values())
    text = f"Inspected **{total}** image(s) in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f} images/s). "
    if not count:
        rule = "by the detector's threshold" if min_confidence is None else f"at a confidence of {min_confidence:.0%}"
        return text + f"None is flagged {rule}."
    reasons = ", ".join(f"{number} {reason}" for reason, number in flagged.most_common())
    shown = f" The gallery shows the first {GALLERY_LIMIT}." if count > GALLERY_LIMIT else ""
    return text + f"**{count}** flagged for a look ({reasons}).{shown}"


def inspect_uploads(
    context: TabContext,
    uploads,
    task: str,
    model: str | None,
    min_confidence: float,
    batch_size: float,
    progress: Progress = None,
    segmenter: str | None = None,
    detector: str | None = None,
) -> Inspection:
    """Check the upload, unpack zips into a temp folder (removed after the run) and run the task."""
    if task not in TASKS:
        raise gr.Error(f"Unknown task '{task}': choose one of {', '.join(TASKS)}.", print_exception=False)
    batch = int(batch_size)
    if batch < 1:
        raise gr.Error(f"The batch size must be at least 1, got {batch}.", print_exception=False)
    out = Path(tempfile.mkdtemp(prefix="vispect-inspect-"))  # downloads and thumbnails: Gradio serves them after
    with tempfile.TemporaryDirectory(prefix="vispect-batch-") as unpacked:
        files = gather_images(upload_paths(uploads), Path(unpacked), context.max_file_bytes)
        if task == CLASSIFY:
            return inspect_classification(context, files, model, float(min_confidence), batch, out, progress)
        if task == FIND_ANOMALIES:
            return inspect_anomalies(context, files, batch, out, progress, detector)
        return inspect_defects(context, files, float(min_confidence), batch, out, progress, segmenter)


def build(context: TabContext) -> None:
    """The Inspect tab's components and events (``/inspect``, ``/load_example_batch``)."""
    run = user_facing(inspect_uploads)

    def inspect_batch(
        uploads, task, model, min_confidence, batch_size, segmenter="", detector="", progress=TRACK_PROGRESS
    ):
        """Inspect many images: (summary, table, flagged images, counts, [CSV, JSON(, RLE CSV)] or [CSV])."""
        return run(context, uploads, task, model, min_confidence, batch_size, progress, segmenter, detector).outputs()

    with gr.Tab("Inspect", id=TAB_ID):
        gr.Markdown(
            "Upload many images at once, or `.zip` archives of them (folders inside are kept), and classify them "
            "or look for defects. Rows that need a look are flagged: unreadable files, *unknown* answers, answers "
            "below the confidence you set, and defective images."
        )
        with gr.Row():
            with gr.Column():
                uploads = gr.File(
                    file_count="multiple",
                    file_types=["image", ".zip"],
                    type="filepath",
                    label=f"Images or .zip archives (up to {MAX_IMAGES_PER_BATCH} images, "
                    f"{context.max_file_bytes / 2**20:.0f} MB per file)",
                    elem_id="inspect-files",
                )
                if EXAMPLE_BATCH.is_file():
                    example_button = gr.Button("Load the example batch (machine parts and other images)")
                    example_button.click(lambda: [str(EXAMPLE_BATCH)], None, uploads, api_name="load_example_batch")
                task = gr.Radio(list(TASKS), value=CLASSIFY, label="Task", elem_id="inspect-task")
                model = context.classifier_dropdown(elem_id="inspect-model")
                segmenter = context.segmenter_dropdown(visible=False, elem_id="inspect-segmenter")
                detectors = context.anomaly_detectors.choices if context.anomaly_detectors else []
                # Never empty: /inspect's inputs after the task must all keep a default for API callers.
                detector = gr.Dropdown(
                    [(choice.label, choice.source) for choice in detectors] or [("(no anomaly detector)", "")],
                    value=detectors[0].source if detectors else "",
                    label="Anomaly detector (several products: a folder per product in the zip)",
                    visible=False,
                    elem_id="inspect-detector",
                )
                min_confidence = gr.Slider(
                    0, 1, value=0.5, step=0.01, label="Flag answers below this confidence", elem_id="inspect-confidence"
                )
                with gr.Accordion("Advanced", open=False):
                    batch_size = gr.Slider(1, 64, value=DEFAULT_BATCH_SIZE, step=1, label="Images per batch")
                inspect_button = gr.Button("Inspect", variant="primary")
            with gr.Column():
                summary = gr.Markdown(elem_id="inspect-summary")
                counts = gr.Dataframe(label="Counts per answer", interactive=False, elem_id="inspect-counts")
                downloads = gr.File(label="Downloads: every row", file_count="multiple", elem_id="inspect-downloads")
        table = gr.Dataframe(label="Results", interactive=False, elem_id="inspect-table")
        gallery = gr.Gallery(label="Flagged images", columns=4, height="auto", elem_id="inspect-gallery")

    task.change(
        lambda chosen: [gr.Dropdown(visible=chosen == shown) for shown in (CLASSIFY, FIND_DEFECTS, FIND_ANOMALIES)],
        task,
        [model, segmenter, detector],
        api_name=False,
    )
    inspect_button.click(
        inspect_batch,
        [uploads, task, model, min_confidence, batch_size, segmenter, detector],
        [summary, table, gallery, counts, downloads],
        api_name="inspect",
    )
