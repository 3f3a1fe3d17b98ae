"""The Model tab: what a classifier or the defect segmenter pair is, how it scored, and its model card."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from common.calibration import CalibrationRecord
from common.checkpoint_files import (
    CONFUSION_MATRIX_PLOT,
    EXPORT_REPORT_FILE,
    MIN_AREA_KEY,
    MIN_AREA_TWO_STAGE_KEY,
    MISCLASSIFIED_PLOT,
    MODEL_CARD_FILE,
    ONNX_FILE,
    PREDICTIONS_PLOT,
    RELIABILITY_PLOT,
    TRAINING_CURVES_PLOT,
    read_model_card,
    saved_metrics,
)
from common.segmentation_rules import all_stored_min_areas
from pipelines.classification import ModelInfo
from pipelines.segmentation import DefectSegmenter
from ui.common import TabContext, user_facing

TAB_ID = "model"
REPORT_PLOTS = {
    CONFUSION_MATRIX_PLOT: "Confusion matrix (test split, row-normalised)",
    TRAINING_CURVES_PLOT: "Training curves",
    RELIABILITY_PLOT: "Calibration: reliability before and after temperature scaling",
    MISCLASSIFIED_PLOT: "Worst errors",
}
SEGMENTER_PLOTS = {
    PREDICTIONS_PLOT: "Validation images: image | truth | prediction",
    TRAINING_CURVES_PLOT: "Training curves",
}
MIN_AREA_SETS = {
    MIN_AREA_KEY: f"segmenter alone (`{MIN_AREA_KEY}`)",
    MIN_AREA_TWO_STAGE_KEY: f"with stage 1 (`{MIN_AREA_TWO_STAGE_KEY}`)",
}
SEGMENTER, STAGE1 = "segmenter", "stage 1"
NO_CARD = f"No model card ({MODEL_CARD_FILE}) was saved with this checkpoint."


def report_images(checkpoint_dir: str | None, plots: dict[str, str] = REPORT_PLOTS) -> list[tuple[str, str]]:
    """The report plots that training saved beside the weights, with captions."""
    if not checkpoint_dir:
        return []
    folder = Path(checkpoint_dir)
    return [(str(folder / name), caption) for name, caption in plots.items() if (folder / name).is_file()]


def markdown_table(rows: list[tuple[str, ...]], header: tuple[str, ...] = ("", "")) -> str:
    lines = [header, ("---",) * len(header), *rows]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines)


def metrics_markdown(metrics: dict[str, float], has_card: bool) -> str:
    if metrics:
        table = markdown_table([(name, f"{value:.4g}") for name, value in sorted(metrics.items())], ("metric", "value"))
        return "**Metrics saved with the checkpoint**\n\n" + table
    if has_card:
        return "No evaluation metrics files were saved with this checkpoint; see its model card below."
    return "No evaluation metrics were saved with this checkpoint."


def runtime_text(runtime: str, report: dict | None) -> str:
    """What runs the model's forward pass, for the details table."""
    if runtime != "onnx":
        return "PyTorch (eager)"
    checked = "checked against PyTorch, see below" if report else f"no {EXPORT_REPORT_FILE} says how it was checked"
    return f"ONNX Runtime (`{ONNX_FILE}`, {checked}); Grad-CAM uses the PyTorch weights"


def _report_value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ", ".join(_report_value(item) for item in value)
    return str(value)


def _report_rows(report: dict, prefix: str = "") -> list[tuple[str, str]]:
    """The report as (figure, value) rows; nested sections become ``section.figure``."""
    rows = []
    for key, value in report.items():
        if isinstance(value, dict):
            rows += _report_rows(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", _report_value(value)))
    return rows


# The figures that say whether the export answers like PyTorch and how much faster it is, shown
# first; the report may carry others (its keys depend on who exported the graph).
KEY_EXPORT_FIGURES = (
    "max_abs_logit_diff",
    "top1_agreement",
    "pixel_agreement",
    "defect_pixel_agreement",
    "latency_ms_eager",
    "latency_ms_onnx",
    "speedup",
    "precision",
    "quantization",
)


def export_report_markdown(report: dict | None) -> str:
    """The parity report saved with an ONNX export as a small table; "" when there is none.

    The key figures that the report has make the table; anything else it holds follows on one line.
    """
    if not report:
        return ""
    rows = _report_rows(report)
    key = [row for name in KEY_EXPORT_FIGURES for row in rows if row[0] == name] or rows
    rest = [row for row in rows if row not in key]
    text = (
        f"**ONNX export check** (`{EXPORT_REPORT_FILE}`: the exported graph against PyTorch on the same inputs; "
        "latencies as measured when it was exported)"
        f"\n\n{markdown_table(key, ('figure', 'value'))}"
    )
    if rest:
        text += "\n\nAlso in the report: " + "; ".join(f"{name} {value}" for name, value in rest) + "."
    return text


def trust_markdown(trust: CalibrationRecord) -> str:
    """Calibration and rejection settings in words."""
    if trust.thresholds is not None:
        thresholds = ", ".join(f"{threshold:.2g}" for threshold in trust.thresholds)
        return (
            "**Trust**: multi-label; each class has its own sigmoid score, and a class counts as present above "
            f"its threshold fitted on validation ({thresholds}, in class order)."
        )
    if not trust.calibrated:
        return "**Trust**: not calibrated; scores are raw softmax outputs and there is no 'unknown' answer."
    text = (
        f"**Trust**: temperature scaling T = {trust.temperature:.3f} fitted on validation; expected calibration error "
        f"{trust.ece_before:.3f} before, {trust.ece_after:.3f} after."
    )
    if trust.rejection_method:
        text += (
            f" Images scoring below {trust.rejection_threshold:.3g} ({trust.rejection_method.replace('_', '-')}) "
            "are answered 'unknown'."
        )
    return text


def model_markdown(info: ModelInfo, has_card: bool = False) -> str:
    """A classifier's ModelInfo as a short Markdown table, its metrics and trust settings."""
    rows = [
        ("Source", f"`{info.source}`"),
        ("Architecture", f"{info.architecture} ({info.model_type})"),
        ("Parameters", f"{info.parameters / 1e6:.2f} M"),
        ("Classes", str(info.num_labels)),
        ("Input size", "x".join(map(str, info.input_size)) if info.input_size else "any"),
        ("Normalisation", f"mean {list(info.mean)}, std {list(info.std)}" if info.mean else "none"),
        ("Resize interpolation", info.interpolation or "-"),
        ("Runtime", runtime_text(info.runtime, info.export_report)),
    ]
    parts = [markdown_table(rows), metrics_markdown(info.metrics, has_card), trust_markdown(info.trust)]
    return "\n\n".join(part for part in [*parts, export_report_markdown(info.export_report)] if part)


def segmenter_markdown(segmenter: DefectSegmenter, metrics: dict[str, float], has_card: bool = False) -> str:
    """The segmenter of the pair: architecture, classes, input, stage 1, minimum areas and metrics."""
    about = segmenter.describe()
    given = about["input"]
    if given["resolution"] == "native":
        size = f"native resolution, padded to a multiple of {given['pad_to_multiple_of']}"
        if given["tile_width"]:
            size += f"; tiles {given['tile_width']} px wide, overlapping {given['tile_overlap']} px"
    else:
        size = "resized to {}x{}".format(*given["resize_to"])
    stage1 = about["stage1"]
    rows = [
        ("Source", f"`{about['source']}`"),
        ("Architecture", f"{about['architecture']} ({about['model_type']})"),
        ("Parameters", f"{about['parameters'] / 1e6:.2f} M"),
        ("Classes", f"{about['num_labels']}: {', '.join(name for _, name in sorted(about['id2label'].items()))}"),
        ("Input size", size),
        ("Normalisation", f"mean {list(given['mean'])}, std {list(given['std'])}"),
        ("Stage 1", f"`{stage1['source']}` ({stage1['architecture']})" if stage1 else "none"),
        ("Runtime", runtime_text(about["runtime"], about["export_report"])),
    ]
    # Every tuned set the config stores; the pipeline serves one of them (min_area_from).
    sets = all_stored_min_areas(segmenter.model.config)
    if sets:
        areas = markdown_table(
            [(label, *(sets[key].get(label, "-") for key in sets)) for label in segmenter.defect_labels],
            ("class", *(MIN_AREA_SETS.get(key, f"`{key}`") for key in sets)),
        )
        areas = (
            "**Minimum areas** (pixels of a class an image needs before its outline is kept, fitted on validation; "
            f"applied now: `{about['min_area_from']}`)\n\n{areas}"
        )
    else:
        areas = "**Minimum areas**: none were tuned for this model, so every outlined pixel is kept."
    parts = [
        markdown_table(rows),
        areas,
        metrics_markdown(metrics, has_card),
        export_report_markdown(about["export_report"]),
    ]
    return "\n\n".join(part for part in parts if part)


def stage1_markdown(segmenter: DefectSegmenter, info: ModelInfo, has_card: bool = False) -> str:
    """Stage 1 of the pair: the classifier's details, then the thresholds it rules classes out by."""
    thresholds = segmenter.describe()["stage1"]["thresholds"]
    rule = ", ".join(f"{label} {threshold:.2g}" for label, threshold in thresholds.items())
    return (
        f"**Stage 1 of `{Path(segmenter.source).name}`**: says which defect types an image has; a class scoring "
        f"below its threshold is removed from the outline ({rule}).\n\n" + model_markdown(info, has_card)
    )


def classifier_description(info: ModelInfo) -> tuple[str, list[tuple[str, str]], str]:
    """(details, report plots, model card) of a classifier."""
    card = read_model_card(info.checkpoint_dir)
    return model_markdown(info, card is not None), report_images(info.checkpoint_dir), card or NO_CARD


def segmenter_description(segmenter: DefectSegmenter, model_dir: str | None) -> tuple[str, list[tuple[str, str]], str]:
    """(details, report plots, model card) of the segmenter loaded from ``model_dir``."""
    folder = model_dir if model_dir and Path(model_dir).is_dir() else None  # a hub id has no local report
    card = read_model_card(folder)
    details = segmenter_markdown(segmenter, saved_metrics(folder) if folder else {}, card is not None)
    return details, report_images(folder, SEGMENTER_PLOTS), card or NO_CARD


def stage1_description(segmenter: DefectSegmenter) -> tuple[str, list[tuple[str, str]], str]:
    """(details, report plots, model card) of the segmenter's stage 1."""
    info = segmenter.stage1.describe()
    card = read_model_card(info.checkpoint_dir)
    return stage1_markdown(segmenter, info, card is not None), report_images(info.checkpoint_dir), card or NO_CARD


def _description_panel(intro: str, details_id: str) -> tuple[gr.Markdown, gr.Gallery, gr.Markdown]:
    details = gr.Markdown(intro, elem_id=details_id)
    plots = gr.Gallery(label="Evaluation report", columns=2, height="auto", object_fit="contain")
    with gr.Accordion("Model card (README.md saved with the checkpoint)", open=False):
        card = gr.Markdown(elem_id=f"{details_id}-card")
    return details, plots, card


def build(context: TabContext) -> None:
    """The Model tab's components and events (``/describe_model``, ``/describe_segmenter``)."""
    segmenters = context.segmenter

    @user_facing
    def describe_model(model: str) -> tuple[str, list[tuple[str, str]], str]:
        """Details, report plots and model card of the chosen classifier."""
        return classifier_description(context.registry.get(model).describe())

    @user_facing
    def describe_segmenter(part: str, segmenter_source: str = "") -> tuple[str, list[tuple[str, str]], str]:
        """Details, report plots and model card of the chosen defect segmenter or of its stage 1."""
        source = segmenters.lazy(segmenter_source)
        segmenter = source.get()
        if part != STAGE1:
            return segmenter_description(segmenter, source.model_dir)
        if segmenter.stage1 is None:
            raise gr.Error(f"The segmenter '{segmenter.source}' has no stage 1; start the app with --stage1 DIR.")
        return stage1_description(segmenter)

    parts = [("the segmenter", SEGMENTER), ("its stage 1", STAGE1)]
    with gr.Tab("Model", id=TAB_ID), gr.Tabs():
        with gr.Tab("Classifier", id="model-classifier"):
            with gr.Row(equal_height=True):
                model = context.classifier_dropdown(scale=3, elem_id="model-model")
                show_model = gr.Button("Show model details", scale=1)
            model_outputs = _description_panel("Select a classifier to see its details.", "classifier-details")
        with gr.Tab("Defect segmenter", id="model-segmenter") as segmenter_tab:
            with gr.Row(equal_height=True):
                chosen_segmenter = context.segmenter_dropdown(scale=2, elem_id="model-segmenter-choice")
                part = gr.Radio(parts, value=SEGMENTER, label="Describe", scale=2)
                show_segmenter = gr.Button("Show segmenter details", scale=1)
            segmenter_outputs = _description_panel("Select a part to see its details.", "segmenter-details")

    show_model.click(describe_model, [model], model_outputs, api_name="describe_model")
    model.change(describe_model, [model], model_outputs, api_name=False)
    context.demo.load(describe_model, [model], model_outputs, api_name=False)
    segmenter_inputs = [part, chosen_segmenter]
    show_segmenter.click(describe_segmenter, segmenter_inputs, segmenter_outputs, api_name="describe_segmenter")
    part.change(describe_segmenter, segmenter_inputs, segmenter_outputs, api_name=False)
    chosen_segmenter.change(describe_segmenter, segmenter_inputs, segmenter_outputs, api_name=False)
    segmenter_tab.select(describe_segmenter, segmenter_inputs, segmenter_outputs, api_name=False)
