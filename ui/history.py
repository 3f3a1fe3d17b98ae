"""The History tab: every logged decision, filtered; one opens with its image and scores; flagged ones get reviewed.

The handlers below take the log (and the registry) as arguments, so tests call them directly;
``build`` wires them to the components (``/search_history``, ``/open_inspection``,
``/explain_inspection``, ``/review_queue``, ``/accept_answer``, ``/set_label``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import gradio as gr
from PIL import Image

from common.image_io import load_image
from common.inspection_log import FLAGS, TASKS, Inspection, InspectionLog
from pipelines.decisions import ANOMALY_ANSWERS
from pipelines.explanation import explain_prediction
from pipelines.fingerprints import model_fingerprint
from pipelines.registry import ClassifierRegistry
from ui.common import TabContext, explanation_markdown, user_facing

TAB_ID = "history"
ALL = "all"
PAGE = 200  # rows the table shows at once; narrow the filters to see older ones
HISTORY_COLUMNS = ["id", "time (UTC)", "task", "channel", "file", "model", "answer", "confidence", "flags", "review"]
QUEUE_COLUMNS = ["id", "time (UTC)", "task", "file", "model", "answer", "confidence", "flags"]
LOG_OFF = (
    "The inspection log is off, so there is no history to show or review. Start the app with the log on "
    "(`--log-db URL`, or the default SQLite file) to record every decision."
)
# Offered as labels when a segmentation is corrected (besides the defect classes).
CLEAN = "clean"


def parse_moment(value, *, end_of_day: bool = False) -> datetime | None:
    """A date filter's value (``gr.DateTime`` string, timestamp or datetime) as aware UTC; None when empty.

    A date without a time is the start of that day, or with ``end_of_day`` the start of the next,
    so "to 2026-12-02" includes the whole of the 2nd.

    Raises:
        gr.Error: a value that is no date, with the format to use.
    """
    if value in (None, ""):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        moment, date_only = value, False
    else:
        text = str(value).strip()
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise gr.Error(
                f"'{text}' is not a date: use YYYY-MM-DD or YYYY-MM-DD HH:MM.", print_exception=False
            ) from None
        date_only = len(text) <= len("YYYY-MM-DD")
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment + timedelta(days=1) if end_of_day and date_only else moment


def _choice(value: str | None) -> str | None:
    return None if value in (None, "", ALL) else value


def _when(inspection: Inspection) -> str:
    return inspection.created_at.strftime("%Y-%m-%d %H:%M:%S")


def _confidence(inspection: Inspection) -> str:
    return "" if inspection.confidence is None else f"{inspection.confidence:.0%}"


def _review_cell(inspection: Inspection) -> str:
    review = inspection.review
    if review is None:
        return "waiting" if inspection.flagged else ""
    return "accepted" if review.accepted else f"set to {review.label}"


def history_rows(inspections: list[Inspection]) -> list[list]:
    """Rows of the History table."""
    return [
        [
            item.id,
            _when(item),
            item.task,
            item.channel,
            item.file_name or "",
            item.model_source,
            item.answer,
            _confidence(item),
            ", ".join(item.flags),
            _review_cell(item),
        ]
        for item in inspections
    ]


def queue_rows(inspections: list[Inspection]) -> list[list]:
    """Rows of the review queue table."""
    return [
        [
            item.id,
            _when(item),
            item.task,
            item.file_name or "",
            item.model_source,
            item.answer,
            _confidence(item),
            ", ".join(item.flags),
        ]
        for item in inspections
    ]


def _require(log: InspectionLog | None) -> InspectionLog:
    if log is None:
        raise gr.Error(LOG_OFF, print_exception=False)
    return log


def search_history(
    log: InspectionLog | None, date_from, date_to, task: str, model: str, flag: str, limit: int = PAGE
) -> list[list]:
    """The History table for the filters ("all" or empty means no filter), newest first."""
    since, until = parse_moment(date_from), parse_moment(date_to, end_of_day=True)
    if since and until and since >= until:
        raise gr.Error("The 'from' date is after the 'to' date: swap them.", print_exception=False)
    inspections = _require(log).list(
        limit=limit, task=_choice(task), model=_choice(model), flag=_choice(flag), since=since, until=until
    )
    return history_rows(inspections)


def _find(log: InspectionLog, inspection_id) -> Inspection:
    if inspection_id in (None, ""):
        raise gr.Error("Choose a row of the table first (or type an inspection number).", print_exception=False)
    inspection = log.get(int(inspection_id))
    if inspection is None:
        raise gr.Error(f"There is no inspection #{int(inspection_id)} in the log.", print_exception=False)
    return inspection


def describe_inspection(inspection: Inspection) -> str:
    """The answer, the model, its thresholds, the flags and the review, in a few lines."""
    answer = f"Unknown (closest class: {inspection.answer})" if inspection.unknown else inspection.answer
    if inspection.confidence is not None:
        answer += f", {inspection.confidence:.0%}"
    lines = [
        f"### #{inspection.id}: {answer}",
        f"{_when(inspection)} UTC, {inspection.task} on the {inspection.channel} channel"
        + (f", file **{inspection.file_name}**" if inspection.file_name else "")
        + ".",
        f"Model `{inspection.model_source}`"
        + (f" (weights SHA-256 `{inspection.model_fingerprint[:16]}…`)" if inspection.model_fingerprint else "")
        + f"; image SHA-256 `{inspection.image_sha256[:16]}…`.",
    ]
    if inspection.thresholds:
        settings = ", ".join(f"{key} {value}" for key, value in inspection.thresholds.items())
        lines.append(f"Thresholds in force: {settings}.")
    lines.append(f"Flags: {', '.join(inspection.flags)}." if inspection.flags else "No flags: not queued for review.")
    review = inspection.review
    if review is not None:
        verdict = "accepted the answer" if review.accepted else f"set the label to **{review.label}**"
        lines.append(f"Reviewed by {review.reviewer} at {review.created_at:%Y-%m-%d %H:%M} UTC: {verdict}.")
    elif inspection.flagged:
        lines.append("Waiting for review.")
    if not inspection.image_stored:
        lines.append("The image was not stored (start the app with `--store-images` to keep them).")
    return "\n\n".join(lines)


def open_inspection(log: InspectionLog | None, inspection_id) -> tuple[str | None, str, dict]:
    """One decision: (its stored image or None, what was decided, its scores)."""
    log = _require(log)
    inspection = _find(log, inspection_id)
    image = log.image_path(inspection.id)
    text = describe_inspection(inspection)
    if inspection.image_stored and image is None:
        text += f"\n\nIts image file is missing from the store ({log.store_dir})."
    return None if image is None else str(image), text, inspection.scores


def explain_inspection(
    log: InspectionLog | None, registry: ClassifierRegistry, inspection_id, method: str = "gradcam"
) -> tuple[object, str]:
    """Grad-CAM of a logged classification on its stored image: (three-panel picture, what it shows)."""
    log = _require(log)
    inspection = _find(log, inspection_id)
    if inspection.task != "classify":
        raise gr.Error(
            "Heatmaps here are for classifications; for a segmentation use *Why this outline?* on the Segment tab.",
            print_exception=False,
        )
    image = log.image_path(inspection.id)
    if image is None:
        raise gr.Error(
            f"Inspection #{inspection.id}'s image was not stored, so it cannot be explained "
            "(start the app with --store-images to keep images).",
            print_exception=False,
        )
    if inspection.model_source not in {choice.source for choice in registry.choices}:
        raise gr.Error(
            f"The model '{inspection.model_source}' that decided is not served now; start the app with "
            f"--classifier {inspection.model_source} to explain this decision.",
            print_exception=False,
        )
    classifier = registry.get(inspection.model_source)
    explanation = explain_prediction(classifier, str(image), method=method)
    text = explanation_markdown(explanation, runtime=classifier.runtime)
    current = model_fingerprint(classifier)
    if inspection.model_fingerprint and current and current != inspection.model_fingerprint:
        text += (
            "\n\nThe model's weights have changed since this decision (another SHA-256): the heatmap is of the "
            "weights served now, which may answer differently."
        )
    return explanation.panels, text


def review_queue(log: InspectionLog | None, limit: int = PAGE) -> tuple[list[list], str]:
    """The flagged decisions nobody reviewed yet, oldest first, and how many there are."""
    log = _require(log)
    waiting = log.queue_size()
    summary = f"**{waiting}** flagged decision{'s' if waiting != 1 else ''} waiting for review" + (
        f" (the oldest {limit} shown)." if waiting > limit else "."
    )
    return queue_rows(log.queue(limit)), summary


def label_choices(inspection: Inspection, registry: ClassifierRegistry, defect_labels: list[str]) -> list[str]:
    """Labels to offer when correcting a decision: the model's classes when it is served, else its scores' keys."""
    if inspection.task == "segment":
        return [CLEAN, *defect_labels]
    if inspection.task == "anomaly":
        return list(ANOMALY_ANSWERS)
    if inspection.model_source in {choice.source for choice in registry.choices}:
        labels = registry.get(inspection.model_source).id2label
        return [labels[index] for index in sorted(labels)]
    return list(inspection.scores)


def submit_review(
    log: InspectionLog | None, inspection_id, reviewer: str, accepted: bool, label: str | None = None
) -> tuple[str, list[list], str]:
    """Store a review; returns (what was stored, the queue without that decision, the queue summary)."""
    log = _require(log)
    inspection = _find(log, inspection_id)
    try:
        review = log.review(inspection.id, label, reviewer, accepted)
    except ValueError as error:
        raise gr.Error(str(error), print_exception=False) from None
    if review.accepted:
        stored = f"#{inspection.id}: {review.reviewer} accepted '{inspection.answer}'."
        if review.label is None:
            stored = f"#{inspection.id}: {review.reviewer} accepted 'unknown': none of the classes."
    else:
        stored = f"#{inspection.id}: {review.reviewer} set the label to '{review.label}'."
    return (stored, *review_queue(log))


def build(context: TabContext) -> None:
    """The History tab's components and events."""
    log = context.inspection_log

    @user_facing
    def search(date_from, date_to, task: str, model: str, flag: str) -> list[list]:
        """Logged decisions matching the filters, newest first (at most 200)."""
        return search_history(log, date_from, date_to, task, model, flag)

    @user_facing
    def open_row(inspection_id) -> tuple[Image.Image | None, str, dict, gr.Dropdown]:
        """One decision: its image (when stored), the answer and its scores."""
        path, text, scores = open_inspection(log, inspection_id)
        inspection = _find(log, inspection_id)
        choices = label_choices(inspection, context.registry, list(context.segmenter.labels().values())[1:])
        # Sent as pixels, not as a path: Gradio serves files only from its own folders, and the store
        # (by default under ~/.local/share) is not one of them.
        image = None if path is None else load_image(path)
        return image, text, scores, gr.Dropdown(choices=choices, value=None)

    @user_facing
    def heatmap(inspection_id) -> tuple[object, str]:
        """Grad-CAM of a logged classification on its stored image."""
        return explain_inspection(log, context.registry, inspection_id)

    @user_facing
    def queue() -> tuple[list[list], str]:
        """Flagged decisions waiting for review, oldest first."""
        return review_queue(log)

    @user_facing
    def accept(inspection_id, reviewer: str) -> tuple[str, list[list], str]:
        """The reviewer accepts the answer of a decision."""
        return submit_review(log, inspection_id, reviewer, accepted=True)

    @user_facing
    def correct(inspection_id, reviewer: str, label: str) -> tuple[str, list[list], str]:
        """The reviewer sets the right label of a decision."""
        return submit_review(log, inspection_id, reviewer, accepted=False, label=label)

    def selected_id(event: gr.SelectData):
        return (event.row_value or [None])[0]

    models = sorted({choice.source for choice in context.registry.choices} | set(log.models() if log else []))
    with gr.Tab("History", id=TAB_ID):
        if log is None:
            gr.Markdown(LOG_OFF)
        else:
            where = f"Decisions are logged to `{log.url}`"
            where += f"; images are stored in `{log.store_dir}`." if log.store_images else "; images are not stored."
            gr.Markdown(where)
        with gr.Row():
            date_from = gr.DateTime(include_time=False, type="string", label="From (UTC)")
            date_to = gr.DateTime(include_time=False, type="string", label="To (UTC, inclusive)")
            task = gr.Dropdown([ALL, *TASKS], value=ALL, label="Task")
            model = gr.Dropdown([ALL, *models], value=ALL, label="Model", allow_custom_value=True)
            flag = gr.Dropdown([ALL, *FLAGS], value=ALL, label="Flag")
        search_button = gr.Button("Search", variant="primary")
        table = gr.Dataframe(
            headers=HISTORY_COLUMNS, interactive=False, label="Decisions (newest first)", elem_id="history-table"
        )
        with gr.Row():
            with gr.Column():
                inspection_id = gr.Number(label="Inspection #", precision=0, minimum=1, elem_id="inspection-id")
                open_button = gr.Button("Open")
                image = gr.Image(
                    type="pil", label="Image (when stored)", interactive=False, height=300, elem_id="inspection-image"
                )
                heatmap_button = gr.Button("Heatmap")
                panels = gr.Image(label="Grad-CAM", interactive=False)
                heatmap_text = gr.Markdown()
            with gr.Column():
                details = gr.Markdown(elem_id="inspection-details")
                scores = gr.JSON(label="Scores")
        gr.Markdown("## Review")
        queue_summary = gr.Markdown(elem_id="queue-summary")
        queue_button = gr.Button("Refresh the queue")
        queue_table = gr.Dataframe(
            headers=QUEUE_COLUMNS, interactive=False, label="Waiting for review (oldest first)", elem_id="review-queue"
        )
        with gr.Row():
            reviewer = gr.Textbox(label="Reviewer", placeholder="your name, typed once: this browser remembers it")
            label = gr.Dropdown(choices=[], label="Right label", allow_custom_value=True)
        with gr.Row():
            accept_button = gr.Button("Accept", variant="primary")
            correct_button = gr.Button("Set label")
        review_message = gr.Markdown(elem_id="review-message")
        # The name is kept in the browser (localStorage), so a reviewer types it once; the buttons still
        # take it as an input, so API callers pass it like any other argument.
        remembered = gr.BrowserState("", storage_key="vispect-reviewer")

    filters = [date_from, date_to, task, model, flag]
    opened = [image, details, scores, label]
    search_button.click(search, filters, table, api_name="search_history")
    open_button.click(open_row, inspection_id, opened, api_name="open_inspection")
    heatmap_button.click(heatmap, inspection_id, [panels, heatmap_text], api_name="explain_inspection")
    queue_button.click(queue, None, [queue_table, queue_summary], api_name="review_queue")
    reviewed = [review_message, queue_table, queue_summary]
    accept_button.click(accept, [inspection_id, reviewer], reviewed, api_name="accept_answer")
    correct_button.click(correct, [inspection_id, reviewer, label], reviewed, api_name="set_label")
    for source in (table, queue_table):
        source.select(selected_id, None, inspection_id, api_name=False).then(
            open_row, inspection_id, opened, api_name=False
        )
    reviewer.change(lambda name: name, reviewer, remembered, api_name=False)
    context.demo.load(lambda name: name, remembered, reviewer, api_name=False)
    if log is not None:
        context.demo.load(queue, None, [queue_table, queue_summary], api_name=False)
