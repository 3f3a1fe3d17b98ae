"""The Anomaly tab: score an image against a detector trained on good images only, and move its line.

The threshold slider re-judges the last scored image from the result kept in ``gr.State``: the
verdict, the outline and the false-reject rate on the held-out good images change at once,
without running the network again.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from common.anomaly_threshold import false_reject_rate
from common.checkpoints import ModelLoadError
from pipelines.anomaly_detection import AnomalyResult
from pipelines.anomaly_detection.registry import TRAIN_HINT, AnomalyDetectors
from pipelines.anomaly_detection.render import anomaly_overlay
from ui.common import RAW_UPLOAD, TabContext, logged_note, user_facing

TAB_ID = "anomaly"
ANOMALY_EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "anomaly"
# The slider's range, in multiples of the fitted threshold: wide enough to see the demo's worst
# defects pass and every good image fail.
THRESHOLD_RANGE = (0.5, 4.0)


def verdict_markdown(result: AnomalyResult, threshold: float) -> str:
    """The score against the line in words, and the anomalous area."""
    answer = "anomalous" if result.anomalous_at(threshold) else "good"
    line = "threshold" if threshold == 1.0 else f"threshold (line moved to {threshold:.2f} × threshold)"
    text = f"**Score {result.score:.2f} × {line}: {answer}.**"
    area = result.area_fraction_at(threshold)
    if area > 0:
        text += f"\n\nAnomalous area: {100 * area:.2f}% of the image, outlined in white."
    else:
        text += "\n\nAnomalous area: none; no pixel of the map is above the line."
    return text


def false_reject_sentence(held_out: list[float], raw_threshold: float, threshold: float) -> str:
    """What the line costs on good images: the share of the held-out good images it rejects."""
    if not held_out:
        return (
            "This detector was saved without its held-out good scores, so the false-reject rate of a moved line "
            "is unknown; retrain it (python -m train.anomaly_detection) to keep them."
        )
    rate = false_reject_rate(held_out, raw_threshold)
    rejected = round(rate * len(held_out))
    return (
        f"False-reject rate at {threshold:.2f} × threshold: {100 * rate:.1f}% of the held-out good images "
        f"({rejected} of {len(held_out)}) would be called anomalous."
    )


def result_json(result: AnomalyResult, threshold: float, held_out: list[float], inspection_id: int | None) -> dict:
    """The answer as plain JSON for API callers."""
    raw_threshold = threshold * result.threshold
    return {
        "product": result.product,
        "score": round(result.score, 4),
        "raw_score": round(result.raw_score, 4),
        "threshold": threshold,
        "raw_threshold": round(raw_threshold, 4),
        "anomalous": result.anomalous_at(threshold),
        "area_fraction": round(result.area_fraction_at(threshold), 6),
        "held_out_false_reject_rate": round(false_reject_rate(held_out, raw_threshold), 4) if held_out else None,
        "inspection_id": inspection_id,
    }


def product_options(detectors: AnomalyDetectors, source: str | None) -> dict:
    """The product dropdown's settings for ``source``: its products, shown only when there is a choice."""
    try:
        products = detectors.products(source) if detectors.choices else []
    except ModelLoadError:
        products = []  # a broken folder: the Detect button says why, with the fix
    return {"choices": products, "value": products[0] if products else None, "visible": len(products) > 1}


def build(context: TabContext) -> None:
    """The Anomaly tab's components and events (``/detect_anomaly``, ``/judge_anomaly``, ``/anomaly_products``)."""
    detectors = context.anomaly_detectors or AnomalyDetectors()

    def judged(last: dict, threshold: float):
        """(overlay, verdict, JSON) of the kept result at ``threshold``."""
        result, held_out = last["result"], last["held_out"]
        text = verdict_markdown(result, threshold)
        text += "\n\n" + false_reject_sentence(held_out, threshold * result.threshold, threshold)
        if last["logged"] is not None:
            text += logged_note(last["logged"])
            if threshold != last["logged_at"]:
                text += f" The log keeps the verdict at {last['logged_at']:.2f} × threshold, where it was detected."
        picture = anomaly_overlay(last["image"], result, threshold)
        return picture, text, result_json(result, threshold, held_out, last["logged"])

    @user_facing
    def detect_anomaly(image: dict | None, source: str | None, threshold: float = 1.0, product: str | None = None):
        """Score an upload: (heatmap overlay, verdict, JSON answer, the kept result)."""
        picture = context.read_upload(image)
        detector = detectors.get(source)
        try:
            result = detector.detect(picture, product=product or None)
        except ValueError as error:  # the product: the message lists the detector's products
            raise gr.Error(f"Product: {error}", print_exception=False) from None
        threshold = float(threshold)
        logged = context.log_anomaly(result, detector, image, channel=TAB_ID, threshold=threshold)
        last = {
            "result": result,
            "image": picture,
            "held_out": detector.held_out_scores(result.product),
            "logged": logged,
            "logged_at": threshold,
        }
        return *judged(last, threshold), last

    @user_facing
    def judge_anomaly(last: dict | None, threshold: float, source: str | None, product: str | None):
        """Re-judge the last scored image at ``threshold`` without running the network: (overlay, verdict, JSON)."""
        threshold = float(threshold)
        if last is not None:
            return judged(last, threshold)
        text = "Detect an image first; this slider then re-judges it without running the network again."
        if detectors.choices:
            config = detectors.config(source)
            rule = config.products[product or next(iter(config.products))]
            text += "\n\n" + false_reject_sentence(rule.held_out_scores, threshold * rule.threshold, threshold)
        return None, text, {}

    @user_facing
    def anomaly_products(source: str | None):
        """The product dropdown for the chosen detector."""
        return gr.update(**product_options(detectors, source))

    examples = sorted(ANOMALY_EXAMPLES.glob("*.png")) + sorted(ANOMALY_EXAMPLES.glob("*.jpg"))
    with gr.Tab("Anomaly", id=TAB_ID):
        if not detectors.choices:
            gr.Markdown(
                "**No anomaly detector is available yet.** Train one on good images only, for example the demo's "
                f"generated steel strips:\n\n```\n{TRAIN_HINT}\n```\n\nthen restart the app (a detector in "
                "`models/steel-anomaly` is offered automatically), or start it with `--anomaly-model DIR`.",
                elem_id="anomaly-missing",
            )
        with gr.Row():
            with gr.Column():
                detector_choice = gr.Dropdown(
                    choices=[(choice.label, choice.source) for choice in detectors.choices],
                    value=detectors.default,
                    label="Anomaly detector (trained on good images only)",
                    elem_id="anomaly-detector",
                )
                product = gr.Dropdown(label="Product", elem_id="anomaly-product", **product_options(detectors, None))
                image = gr.Image(
                    type="filepath", sources=["upload", "clipboard"], label="Image", elem_id="anomaly-image"
                )
                threshold = gr.Slider(
                    *THRESHOLD_RANGE, value=1.0, step=0.05, elem_id="anomaly-threshold",
                    label="Threshold (1.0 = the line fitted on held-out good images; moving it re-judges at once)",
                )  # fmt: skip
                detect_button = gr.Button("Detect anomalies", variant="primary")
                if examples:
                    gr.Examples(
                        examples=[[str(path)] for path in examples],
                        inputs=[image],
                        label="Generated steel strips, good and defective (not seen in training)",
                        elem_id="anomaly-examples",
                    )
            with gr.Column():
                overlay = gr.Image(
                    label="Anomaly map over the image (red: far from every good patch)",
                    type="pil",
                    interactive=False,
                    elem_id="anomaly-overlay",
                )
                verdict = gr.Markdown(elem_id="anomaly-verdict")
                answer = gr.JSON(label="Answer", elem_id="anomaly-json")
        last = gr.State(None)

    detect_button.click(
        detect_anomaly,
        [image, detector_choice, threshold, product],
        [overlay, verdict, answer, last],
        api_name="detect_anomaly",
        **RAW_UPLOAD,
    )
    threshold.change(
        judge_anomaly,
        [last, threshold, detector_choice, product],
        [overlay, verdict, answer],
        api_name="judge_anomaly",
        trigger_mode="always_last",
    )
    detector_choice.change(anomaly_products, [detector_choice], [product], api_name="anomaly_products")
