"""The Classify tab: upload a photo, read the top classes and how far to trust the score."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from common.calibration import CalibrationRecord
from pipelines.classification import Classification
from pipelines.examples import example_photos
from ui.common import RAW_UPLOAD, TabContext, logged_note, scores_for_label, user_facing

TAB_ID = "classify"


def verdict_text(result: Classification, trust: CalibrationRecord) -> str:
    """One or two plain sentences: the answer and how far to trust its score."""
    best = result.predictions[0]
    if result.unknown:
        return (
            f"Unknown: this image looks like none of the classes this model knows. Its open-set score "
            f"{result.open_set_score:.3g} is below the threshold {result.threshold:.3g} fitted on validation images; "
            f"the closest class would be '{best.label}' ({best.score:.0%})."
        )
    if trust.calibrated:
        return (
            f"{best.label}: {best.score:.0%}. Confidences are calibrated on validation data "
            f"(temperature {trust.temperature:.2f}, expected calibration error {trust.ece_after:.3f}), so "
            f"answers given at about {best.score:.0%} were right about {best.score:.0%} of the time there."
        )
    return (
        f"{best.label}: {best.score:.0%}. These are the model's raw softmax scores: it has not been calibrated "
        "on your images, so read them as a ranking rather than as probabilities."
    )


@dataclass(frozen=True)
class ClassifyTab:
    """The components other tabs wire to: the image, its classifier and the "Explain this image" button."""

    image: gr.Image
    model: gr.Dropdown
    send_button: gr.Button


def build(context: TabContext) -> ClassifyTab:
    """The Classify tab's components and events (``/classify``)."""

    @user_facing
    def classify_image(image: dict | None, model: str, top_k: float) -> tuple[dict[str, float], str]:
        """Classify an uploaded image; returns ({label: probability}, verdict sentence)."""
        picture = context.read_upload(image)
        classifier = context.registry.get(model)
        result = classifier.classify(picture, top_k=int(top_k))
        logged = context.log_classification(result, classifier, image, channel=TAB_ID)
        return scores_for_label(result.predictions), verdict_text(result, classifier.trust) + logged_note(logged)

    with gr.Tab("Classify", id=TAB_ID):
        with gr.Row():
            with gr.Column():
                model = context.classifier_dropdown(elem_id="classify-model")
                image = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"], label="Image", height=360)
                top_k = gr.Slider(1, 10, value=5, step=1, label="Classes to show")
                with gr.Row():
                    classify_button = gr.Button("Classify", variant="primary")
                    send_button = gr.Button("Explain this image")
            with gr.Column():
                label = gr.Label(label="Prediction", show_label=True, elem_id="classify-label")
                verdict = gr.Markdown(elem_id="verdict")
        gr.Examples(examples=[[str(path)] for path in example_photos()], inputs=[image], label="Example photos")

    classify_button.click(classify_image, [image, model, top_k], [label, verdict], api_name="classify", **RAW_UPLOAD)
    image.upload(classify_image, [image, model, top_k], [label, verdict], api_name=False, **RAW_UPLOAD)
    return ClassifyTab(image=image, model=model, send_button=send_button)
