"""The Segment tab: outline steel defects, download the masks, and ask why a class was outlined."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import gradio as gr

from pipelines.explanation import METHODS, explain_defect
from pipelines.segmentation import Segmentation, class_colour, label_map_png, submission_rows
from ui.common import RAW_UPLOAD, TabContext, explanation_markdown, logged_note, user_facing

TAB_ID = "segment"
STEEL_EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "steel"


def uploaded_name(payload) -> str:
    """The file name the user uploaded (for download names)."""
    if isinstance(payload, dict):
        return payload.get("orig_name") or Path(payload.get("path") or "image").name
    return Path(str(payload or "image")).name


def defect_colours(labels: dict[int, str]) -> dict[str, str] | None:
    """Label -> colour for the legend (from a segmenter's ``labels()``), the same colours as the pipeline's overlays."""
    if not labels:
        return None
    return {label: "#{:02x}{:02x}{:02x}".format(*class_colour(index)) for index, label in labels.items() if index}


def defect_names(labels: dict[int, str]) -> list[str]:
    """The defect classes of a segmenter's ``labels()``, without the background (class 0)."""
    return [name for index, name in sorted(labels.items()) if index]


def segmentation_markdown(result: Segmentation) -> str:
    """Defective or clean, and what stage 1 said."""
    found = [r for r in result.regions if r.present]
    if found:
        text = "**Defective**: " + ", ".join(f"{r.label} ({100 * r.area_fraction:.2f}% of the image)" for r in found)
    else:
        text = "**Clean**: no defect found."
    if result.stage1 is not None:
        verdicts = ", ".join(f"{label} {probability:.0%}" for label, probability in result.stage1.items())
        ruled = [r.label for r in result.regions if r.ruled_out]
        text += f"\n\nStage 1 (which defect types are present): {verdicts}."
        if ruled:
            text += f" Ruled out, so removed from the outline: {', '.join(ruled)}."
        # The two models disagree: stage 1 sees a type that the segmenter did not outline.
        unseen = [r.label for r in result.regions if not r.ruled_out and not r.present]
        if unseen:
            text += (
                f" Stage 1 sees {', '.join(unseen)}, but the segmenter outlined none (or only regions under the "
                "minimum area): the models disagree, so look at this image yourself."
            )
    return text


def defect_explanation_markdown(
    explanation, outline: Segmentation, min_areas: dict[int, int], runtime: str = "torch"
) -> str:
    """What a defect class's heatmap shows, measured against the outline the user sees.

    ``explain_defect`` explains the segmenter's own argmax region, before stage 1 and the
    minimum areas; when the outline has no region of the class, say so rather than quote a
    probability for a region that is not drawn.

    Args:
        explanation: ``explain_defect``'s answer.
        outline: ``segment()`` of the same image with the same minimum areas.
        min_areas: Class id -> the minimum area in pixels that ``outline`` applied.
        runtime: What serves the segmenter (``"onnx"`` or ``"torch"``).
    """
    region = outline.region(explanation.target_index)
    if region.present:
        return explanation_markdown(explanation, runtime=runtime)
    label = region.label
    if region.ruled_out:
        probability = (outline.stage1 or {}).get(label)
        said = "" if probability is None else f" (it gives {label} {100 * probability:.2g}%, below its threshold)"
        why = f"stage 1 ruled {label} out{said}, so the segmenter's {label} pixels went to the background"
    elif min_areas.get(region.class_id):
        why = (
            f"the segmenter's {label} pixels add up to less than the minimum area of {min_areas[region.class_id]} "
            "pixels, so they were dropped"
        )
    else:
        why = f"the segmenter did not outline {label} in this image"
    painted = "a region" if explanation.region_pixels is None else f"{explanation.region_pixels} pixels"
    headline = (
        f"**The outline has no {label} region**: {why}.\n\nThe heatmap (**{explanation.method}** on layer "
        f"`{explanation.layer_name}`) shows where the segmenter alone, before stage 1 and the minimum area, paints "
        f"**{label}**: {painted} with mean probability {explanation.target_score:.0%}, none of it in the outline shown."
    )
    return explanation_markdown(explanation, headline, runtime=runtime)


def segmentation_downloads(result: Segmentation, name: Path) -> list[str]:
    """The class-index mask as a PNG and the per-class RLE rows as a Kaggle-style CSV."""
    folder = Path(tempfile.mkdtemp(prefix="vispect-"))
    mask_path = folder / f"{name.stem}_mask.png"
    label_map_png(result).save(mask_path)
    csv_path = folder / f"{name.stem}_rle.csv"
    with csv_path.open("w", newline="") as handle:
        csv.writer(handle).writerows([("ImageId", "EncodedPixels", "ClassId"), *submission_rows(name.name, result)])
    return [str(mask_path), str(csv_path)]


def build(context: TabContext) -> None:
    """The Segment tab's components and events (``/segment``, ``/explain_defect``)."""

    @user_facing
    def segment_image(image: dict | None, min_area: float, segmenter_source: str = ""):
        """Outline defects: (annotated image, per-class table, verdict, [mask PNG, RLE CSV])."""
        picture = context.read_upload(image)
        segmenter = context.segmenter.get(segmenter_source)
        min_areas = segmenter.min_area_at_least(int(min_area))
        # The probabilities let the log see the segmenter painting a class that stage 1 ruled out.
        logging = context.inspection_log is not None
        result = segmenter.segment(picture, min_area=min_areas, return_probabilities=logging)
        logged = context.log_segmentation(result, segmenter, image, channel=TAB_ID, min_area=min_areas)
        return (
            (picture, [(region.mask, region.label) for region in result.regions if region.present]),
            [
                [r.label, round(100 * r.area_fraction, 3), round(r.confidence, 3), "yes" if r.ruled_out else ""]
                for r in result.regions
            ],  # fmt: skip
            segmentation_markdown(result) + logged_note(logged),
            segmentation_downloads(result, Path(uploaded_name(image))),
        )

    @user_facing
    def explain_defect_class(image: dict | None, defect: str, method: str, min_area: float = 0, segmenter_source=""):
        """Grad-CAM for one defect class of the segmenter: (three panels, sentence)."""
        picture = context.read_upload(image)
        segmenter = context.segmenter.get(segmenter_source)
        explanation = explain_defect(segmenter, picture, class_id=defect, method=method)
        min_areas = segmenter.min_area_at_least(int(min_area))
        outline = segmenter.segment(picture, min_area=min_areas)
        return explanation.panels, defect_explanation_markdown(explanation, outline, min_areas, segmenter.runtime)

    steel_examples = sorted(STEEL_EXAMPLES.glob("*.jpg"))
    with gr.Tab("Segment", id=TAB_ID):
        with gr.Row():
            with gr.Column():
                steel = gr.Image(
                    type="filepath", sources=["upload", "clipboard"], label="Steel strip image", elem_id="steel-image"
                )
                min_area = gr.Slider(
                    0, 5000, value=0, step=50,
                    label="Also ignore regions smaller than (pixels; the model's tuned minimums always apply)",
                )  # fmt: skip
                # Segmenters trained in the Train tab join this list (ui/train.py refreshes it).
                segmenter_choice = context.segmenter_dropdown(elem_id="segmenter")
                segment_button = gr.Button("Find defects", variant="primary")
                if steel_examples:
                    gr.Examples(
                        examples=[[str(path)] for path in steel_examples],
                        inputs=[steel],
                        label="Generated steel images (not seen in training)",
                        elem_id="steel-examples",
                    )
            with gr.Column():
                annotated = gr.AnnotatedImage(
                    label="Defects", color_map=defect_colours(context.segmenter.labels()), elem_id="defects"
                )
                defect_verdict = gr.Markdown(elem_id="defect-verdict")
                table = gr.Dataframe(
                    headers=["defect", "area %", "confidence", "ruled out by stage 1"],
                    label="Per class",
                    interactive=False,
                )
                downloads = gr.File(
                    label="Downloads: mask PNG and RLE CSV", file_count="multiple", elem_id="defect-downloads"
                )
        with gr.Accordion("Why this outline? Grad-CAM for one defect class", open=False):
            with gr.Row():
                defect_class = gr.Dropdown(
                    choices=defect_names(context.segmenter.labels()),
                    label="Defect class",
                    elem_id="defect-class",
                )
                defect_method = gr.Dropdown(
                    choices=[name for name in METHODS if name != "scorecam"], value="gradcam", label="Method"
                )
                defect_button = gr.Button("Explain this defect")
            defect_panels = gr.Image(label="Original | heatmap | overlay", type="pil", interactive=False)
            defect_text = gr.Markdown(elem_id="defect-explanation")

    @user_facing
    def show_segmenter(segmenter_source):
        """The chosen segmenter's defect classes in the legend and the "why" dropdown (read from its config)."""
        labels = context.segmenter.lazy(segmenter_source).labels()
        names = defect_names(labels)
        return gr.update(color_map=defect_colours(labels)), gr.update(choices=names, value=names[0] if names else None)

    segmenter_choice.change(show_segmenter, segmenter_choice, [annotated, defect_class], api_name=False)
    segment_button.click(
        segment_image,
        [steel, min_area, segmenter_choice],
        [annotated, table, defect_verdict, downloads],
        api_name="segment",
        **RAW_UPLOAD,
    )
    defect_button.click(
        explain_defect_class,
        [steel, defect_class, defect_method, min_area, segmenter_choice],
        [defect_panels, defect_text],
        api_name="explain_defect",
        **RAW_UPLOAD,
    )
