"""The Explain tab: a class activation map for one image, with how faithful it is."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.explanation import METHODS, explain_prediction
from ui.common import RAW_UPLOAD, TabContext, explanation_markdown, logged_note, scores_for_label, user_facing

TAB_ID = "explain"
TOP_CLASS = "top class"
METHOD_LABELS = {
    "scorecam": "scorecam (slow: one forward pass per channel)",
    "eigencam": "eigencam (ignores the class)",
}


@dataclass(frozen=True)
class ExplainTab:
    image: gr.Image
    model: gr.Dropdown

    def receive(self, button: gr.Button, image: gr.Image, model: gr.Dropdown, tabs: gr.Tabs) -> None:
        """``button`` sends ``image`` and its classifier here and selects this tab."""
        button.click(
            lambda picture, source: (picture, source, gr.Tabs(selected=TAB_ID)),
            [image, model],
            [self.image, self.model, tabs],
            api_name=False,
        )


def build(context: TabContext) -> ExplainTab:
    """The Explain tab's components and events (``/explain``)."""

    @user_facing
    def explain_image(
        image: dict | None,
        model: str,
        method: str,
        target: str | None,
        layer: str | None,
        alpha: float,
        guided: bool = False,
    ) -> tuple[str, dict[str, float], str]:
        """Grad-CAM for one image: (three-panel picture, top classes, faithfulness sentence)."""
        picture = context.read_upload(image)
        classifier = context.registry.get(model)
        explanation = explain_prediction(
            classifier,
            picture,
            method=method,
            target=None if target in (None, "", TOP_CLASS) else target,
            layer=(layer or "").strip() or None,
            alpha=float(alpha),
            guided=bool(guided),
        )
        result = classifier.classify(picture, top_k=5)
        logged = context.log_classification(result, classifier, image, channel=TAB_ID)
        text = explanation_markdown(explanation, runtime=classifier.runtime) + logged_note(logged)
        return explanation.panels, scores_for_label(result.predictions), text

    @user_facing
    def target_choices(model: str):
        """The class dropdown follows the chosen model's labels."""
        labels = context.registry.get(model).id2label
        return gr.Dropdown(choices=[TOP_CLASS, *(labels[i] for i in sorted(labels))], value=TOP_CLASS)

    with gr.Tab("Explain", id=TAB_ID):
        with gr.Row():
            with gr.Column():
                model = context.classifier_dropdown(elem_id="explain-model")
                image = gr.Image(
                    type="filepath", sources=["upload", "webcam", "clipboard"], label="Image", height=300,
                    elem_id="explain-image",
                )  # fmt: skip
                method = gr.Dropdown(
                    choices=[(METHOD_LABELS.get(name, name), name) for name in METHODS], value="gradcam", label="Method"
                )
                target = gr.Dropdown(
                    choices=[TOP_CLASS], value=TOP_CLASS, label="Class to explain", allow_custom_value=True
                )
                with gr.Accordion("Advanced", open=False):
                    layer = gr.Textbox(label="Target layer (module name; empty = automatic)")
                    alpha = gr.Slider(0.1, 0.9, value=0.5, step=0.05, label="Overlay opacity")
                    guided = gr.Checkbox(
                        value=False,
                        label="Pixel detail (Guided Grad-CAM: sharper on small objects; ReLU networks only)",
                    )
                explain_button = gr.Button("Explain", variant="primary")
            with gr.Column():
                panels = gr.Image(label="Original | heatmap | overlay", type="pil", interactive=False)
                faithfulness = gr.Markdown(elem_id="faithfulness")
                top_classes = gr.Label(label="Top classes", elem_id="explain-label")

    explain_button.click(
        explain_image,
        [image, model, method, target, layer, alpha, guided],
        [panels, top_classes, faithfulness],
        api_name="explain",
        **RAW_UPLOAD,
    )
    model.change(target_choices, [model], [target], api_name=False)
    context.demo.load(target_choices, [model], [target], api_name=False)
    return ExplainTab(image=image, model=model)
