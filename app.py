"""Gradio app: classify images and inspect the model behind the answer.

Layout and wiring only; the work happens in ``pipelines/``. ``demo`` is built at import
without loading any model or starting a server, so tests can import and launch it.

    python app.py [--classifier DIR_OR_HUB_ID ...] [--share] [--port 7860]
"""

from __future__ import annotations

import argparse
import base64
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from common.checkpoints import ModelLoadError, resolve_checkpoint
from common.image_io import MAX_FILE_BYTES, ImageLoadError, load_image
from pipelines.classification import verdict_text
from pipelines.examples import example_photos
from pipelines.explanation import METHODS, ExplanationError, explain_defect, explain_prediction
from pipelines.registry import PROJECT_MODELS_DIR, ClassifierRegistry, LazySegmenter

logger = logging.getLogger("vispect.app")

TITLE = "Visual inspection toolkit"


def uploaded_image(payload) -> str | bytes | None:
    """The file (or bytes) behind a raw ``gr.Image`` payload, for our own loader.

    Image events run with ``preprocess=False``: ``gr.Image`` would otherwise open every
    upload with PIL before our code runs, and a non-image would fail inside Gradio with a
    message naming a server temp path. ``common.image_io.load_image`` gives the specific
    reason instead, and applies the size and pixel caps.
    """
    if not payload:
        return None
    if isinstance(payload, str):
        return payload
    url = payload.get("url") or ""
    if not payload.get("path") and url.startswith("data:"):
        return base64.b64decode(url.partition(",")[2])
    return payload.get("path")


def user_facing(handler: Callable) -> Callable:
    """Turn our errors into a ``gr.Error`` with their message; never a traceback in the UI."""

    def wrapped(*args):
        try:
            return handler(*args)
        except gr.Error:
            raise
        except ImageLoadError as error:
            # Uploads live in a server temp folder; name only the file the user chose.
            raise gr.Error(
                f"Cannot read image '{Path(error.source).name}': {error.reason}", print_exception=False
            ) from None
        except (ModelLoadError, ExplanationError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:
            logger.exception("unexpected error in %s", handler.__name__)
            raise gr.Error(f"Internal error ({type(error).__name__}): {error}. The server log has details.") from None

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def scores_for_label(predictions) -> dict[str, float]:
    """Predictions -> ``{label: score}`` for ``gr.Label``; repeated names stay apart."""
    scores: dict[str, float] = {}
    for prediction in predictions:
        key = prediction.label if prediction.label not in scores else f"{prediction.label} (class {prediction.index})"
        scores[key] = prediction.score
    return scores


REPORT_PLOTS = {
    "confusion_matrix.png": "Confusion matrix (test split, row-normalised)",
    "training_curves.png": "Training curves",
    "reliability.png": "Calibration: reliability before and after temperature scaling",
    "misclassified.png": "Worst errors",
}


def report_images(checkpoint_dir: str | None) -> list[tuple[str, str]]:
    """The report plots that training saved beside the weights, with captions."""
    if not checkpoint_dir:
        return []
    folder = Path(checkpoint_dir)
    return [(str(folder / name), caption) for name, caption in REPORT_PLOTS.items() if (folder / name).is_file()]


def trust_markdown(trust) -> str:
    """Calibration and rejection settings in words."""
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


TOP_CLASS = "top class"
METHOD_LABELS = {
    "scorecam": "scorecam (slow: one forward pass per channel)",
    "eigencam": "eigencam (ignores the class)",
}


def explanation_markdown(explanation) -> str:
    """What the heatmap shows and how far it can be trusted."""
    text = (
        f"**{explanation.method}** on layer `{explanation.layer_name}` for **{explanation.target_label}** "
        f"(probability {explanation.target_score:.0%})."
    )
    if explanation.guided:
        text += " With pixel detail: the heatmap times guided-backpropagation gradients."
    if explanation.faithfulness is not None:
        text += f"\n\n**Faithfulness {explanation.faithfulness.score:+.2f}**: {explanation.faithfulness.sentence}"
    return text


STEEL_EXAMPLES = Path(__file__).resolve().parent / "examples" / "steel"


def uploaded_name(payload) -> str:
    """The file name the user uploaded (for download names)."""
    if isinstance(payload, dict):
        return payload.get("orig_name") or Path(payload.get("path") or "image").name
    return Path(str(payload or "image")).name


def defect_colours(segmenter_source) -> dict[str, str] | None:
    """Label -> colour for the legend, the same colours as the pipeline's overlays."""
    from pipelines.segmentation import class_colour

    labels = segmenter_source.labels()
    if not labels:
        return None
    return {label: "#{:02x}{:02x}{:02x}".format(*class_colour(index)) for index, label in labels.items() if index}


def segmentation_markdown(result) -> str:
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


def segmentation_downloads(result, name: Path) -> list[str]:
    """The class-index mask as a PNG and the per-class RLE rows as a Kaggle-style CSV."""
    import csv
    import tempfile

    from pipelines.segmentation import label_map_png, submission_rows

    folder = Path(tempfile.mkdtemp(prefix="vispect-"))
    mask_path = folder / f"{name.stem}_mask.png"
    label_map_png(result).save(mask_path)
    csv_path = folder / f"{name.stem}_rle.csv"
    with csv_path.open("w", newline="") as handle:
        csv.writer(handle).writerows([("ImageId", "EncodedPixels", "ClassId"), *submission_rows(name.name, result)])
    return [str(mask_path), str(csv_path)]


def model_markdown(info) -> str:
    """A ModelInfo as a short Markdown table."""
    rows = [
        ("Source", f"`{info.source}`"),
        ("Architecture", f"{info.architecture} ({info.model_type})"),
        ("Parameters", f"{info.parameters / 1e6:.2f} M"),
        ("Classes", str(info.num_labels)),
        ("Input size", "x".join(map(str, info.input_size)) if info.input_size else "any"),
        ("Normalisation", f"mean {list(info.mean)}, std {list(info.std)}" if info.mean else "none"),
        ("Resize interpolation", info.interpolation or "-"),
    ]
    text = "| | |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)
    if info.metrics:
        text += "\n\n**Metrics saved with the checkpoint**\n\n| metric | value |\n|---|---|\n"
        text += "\n".join(f"| {name} | {value:.4g} |" for name, value in sorted(info.metrics.items()))
    else:
        text += "\n\nNo evaluation metrics were saved with this checkpoint."
    return text + "\n\n" + trust_markdown(info.trust)


def build_demo(
    registry: ClassifierRegistry,
    segmenter_source: LazySegmenter | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> gr.Blocks:
    """The Blocks UI; ``registry`` says which classifiers the dropdowns offer."""
    segmenter_source = segmenter_source or LazySegmenter(None)
    steel_examples = sorted(STEEL_EXAMPLES.glob("*.jpg"))

    @user_facing
    def classify_image(image: dict | None, model: str, top_k: float) -> tuple[dict[str, float], str]:
        """Classify an uploaded image; returns ({label: probability}, verdict sentence)."""
        picture = read_upload(image)
        classifier = registry.get(model)
        result = classifier.classify(picture, top_k=int(top_k))
        return scores_for_label(result.predictions), verdict_text(result, classifier.trust)

    @user_facing
    def describe_model(model: str) -> tuple[str, list[tuple[str, str]]]:
        """Architecture, size, preprocessing, saved metrics and report plots of the chosen model."""
        info = registry.get(model).describe()
        return model_markdown(info), report_images(info.checkpoint_dir)

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
        picture = read_upload(image)
        classifier = registry.get(model)
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
        return explanation.panels, scores_for_label(result.predictions), explanation_markdown(explanation)

    def read_upload(image: dict | None):
        source = uploaded_image(image)
        if source is None:
            raise gr.Error("No image yet: upload a photo, take one with the webcam, or paste one first.")
        return load_image(source, max_bytes=max_file_bytes)

    @user_facing
    def segment_image(image: dict | None, min_area: float):
        """Outline defects: (annotated image, per-class table, verdict, [mask PNG, RLE CSV])."""
        picture = read_upload(image)
        segmenter = segmenter_source.get()
        result = segmenter.segment(picture, min_area=segmenter.min_area_at_least(int(min_area)))
        return (
            (picture, [(region.mask, region.label) for region in result.regions if region.present]),
            [
                [r.label, round(100 * r.area_fraction, 3), round(r.confidence, 3), "yes" if r.ruled_out else ""]
                for r in result.regions
            ],  # fmt: skip
            segmentation_markdown(result),
            segmentation_downloads(result, Path(uploaded_name(image))),
        )

    @user_facing
    def explain_defect_class(image: dict | None, defect: str, method: str):
        """Grad-CAM for one defect class of the segmenter: (three panels, sentence)."""
        picture = read_upload(image)
        explanation = explain_defect(segmenter_source.get(), picture, class_id=defect, method=method)
        return explanation.panels, explanation_markdown(explanation)

    @user_facing
    def target_choices(model: str):
        """The class dropdown of the Explain tab follows the chosen model's labels."""
        labels = registry.get(model).id2label
        return gr.Dropdown(choices=[TOP_CLASS, *(labels[i] for i in sorted(labels))], value=TOP_CLASS)

    choices = [(choice.label, choice.source) for choice in registry.choices]
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nIdentify objects in images, see why the model decided, and how far to trust it.")
        model = gr.Dropdown(choices=choices, value=registry.default, label="Classifier")
        with gr.Tabs() as tabs:
            with gr.Tab("Classify", id="classify"):
                with gr.Row():
                    with gr.Column():
                        image = gr.Image(
                            type="filepath", sources=["upload", "webcam", "clipboard"], label="Image", height=360
                        )
                        top_k = gr.Slider(1, 10, value=5, step=1, label="Classes to show")
                        with gr.Row():
                            classify_button = gr.Button("Classify", variant="primary")
                            send_button = gr.Button("Explain this image")
                    with gr.Column():
                        label = gr.Label(label="Prediction", show_label=True)
                        verdict = gr.Markdown(elem_id="verdict")
                gr.Examples(examples=[[str(path)] for path in example_photos()], inputs=[image], label="Example photos")
            with gr.Tab("Explain", id="explain"):
                with gr.Row():
                    with gr.Column():
                        explain_input = gr.Image(
                            type="filepath", sources=["upload", "webcam", "clipboard"], label="Image", height=300
                        )
                        method = gr.Dropdown(
                            choices=[(METHOD_LABELS.get(name, name), name) for name in METHODS],
                            value="gradcam",
                            label="Method",
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
                        explain_label = gr.Label(label="Top classes")
            with gr.Tab("Segment", id="segment"):
                with gr.Row():
                    with gr.Column():
                        steel = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Steel strip image")
                        min_area = gr.Slider(
                            0, 5000, value=0, step=50,
                            label="Also ignore regions smaller than (pixels; the model's tuned minimums always apply)",
                        )  # fmt: skip
                        segment_button = gr.Button("Find defects", variant="primary")
                        if steel_examples:
                            gr.Examples(examples=[[str(p)] for p in steel_examples], inputs=[steel],
                                        label="Generated steel images (not seen in training)")  # fmt: skip
                    with gr.Column():
                        annotated = gr.AnnotatedImage(label="Defects", color_map=defect_colours(segmenter_source))
                        defect_verdict = gr.Markdown(elem_id="defect-verdict")
                        table = gr.Dataframe(
                            headers=["defect", "area %", "confidence", "ruled out by stage 1"],
                            label="Per class",
                            interactive=False,
                        )
                        downloads = gr.File(label="Downloads: mask PNG and RLE CSV", file_count="multiple")
                with gr.Accordion("Why this outline? Grad-CAM for one defect class", open=False):
                    with gr.Row():
                        defect_class = gr.Dropdown(
                            choices=[name for i, name in sorted(segmenter_source.labels().items()) if i],
                            label="Defect class",
                        )
                        defect_method = gr.Dropdown(
                            choices=[name for name in METHODS if name != "scorecam"], value="gradcam", label="Method"
                        )
                        defect_button = gr.Button("Explain this defect")
                    defect_panels = gr.Image(label="Original | heatmap | overlay", type="pil", interactive=False)
                    defect_text = gr.Markdown()
            with gr.Tab("Model", id="model"):
                details = gr.Markdown("Select a classifier to see its details.")
                plots = gr.Gallery(label="Evaluation report", columns=2, height="auto", object_fit="contain")
                refresh = gr.Button("Show model details")

        raw = {"preprocess": False}  # see uploaded_image()
        classify_button.click(classify_image, [image, model, top_k], [label, verdict], api_name="classify", **raw)
        image.upload(classify_image, [image, model, top_k], [label, verdict], api_name=False, **raw)
        send_button.click(lambda picture: (picture, gr.Tabs(selected="explain")), [image], [explain_input, tabs],
                          api_name=False)  # fmt: skip
        explain_button.click(
            explain_image,
            [explain_input, model, method, target, layer, alpha, guided],
            [panels, explain_label, faithfulness],
            api_name="explain",
            **raw,
        )
        segment_button.click(
            segment_image, [steel, min_area], [annotated, table, defect_verdict, downloads], api_name="segment", **raw
        )
        defect_button.click(
            explain_defect_class,
            [steel, defect_class, defect_method],
            [defect_panels, defect_text],
            api_name="explain_defect",
            **raw,
        )
        refresh.click(describe_model, [model], [details, plots], api_name="describe_model")
        model.change(describe_model, [model], [details, plots], api_name=False)
        model.change(target_choices, [model], [target], api_name=False)
        demo.load(describe_model, [model], [details, plots], api_name=False)
        demo.load(target_choices, [model], [target], api_name=False)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"{TITLE}: a Gradio app for classification.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for your network)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link (needs internet)")
    parser.add_argument(
        "--classifier",
        action="append",
        default=[],
        metavar="DIR_OR_HUB_ID",
        help="extra classifier checkpoint to offer (repeatable); checkpoints in --models-dir are found automatically",
    )
    parser.add_argument(
        "--models-dir",
        default=str(PROJECT_MODELS_DIR),
        help="folder with the demo models and extra classifier checkpoints (default: models/ beside app.py)",
    )
    parser.add_argument("--segmenter", help="defect segmentation checkpoint (default: models/steel-segformer)")
    parser.add_argument("--stage1", help="with --segmenter: its stage-1 'which defects are present' classifier")
    parser.add_argument("--max-file-mb", type=float, default=MAX_FILE_BYTES / 2**20, help="upload size limit in MB")
    parser.add_argument("--queue-size", type=int, default=64, help="requests that may wait before new ones are refused")
    parser.add_argument("--concurrency", type=int, default=2, help="requests processed at the same time")
    args = parser.parse_args(argv)
    for flag, value, low in (
        ("--port", args.port, 1),
        ("--queue-size", args.queue_size, 1),
        ("--concurrency", args.concurrency, 1),
    ):
        if value < low:
            parser.error(f"{flag} must be at least {low}, got {value}")
    if args.max_file_mb <= 0:
        parser.error(f"--max-file-mb must be positive, got {args.max_file_mb}")
    return args


def launch_app(demo: gr.Blocks, args: argparse.Namespace, prevent_thread_lock: bool = False):
    """Queue and launch ``demo``; without internet ``--share`` falls back to local serving."""
    demo.queue(max_size=args.queue_size, default_concurrency_limit=args.concurrency)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=int(args.max_file_mb * 2**20),
        show_error=True,
        prevent_thread_lock=True,
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
demo = build_demo(registry, LazySegmenter.from_models_dir())

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cli = parse_args()
    try:
        for source in cli.classifier:
            resolve_checkpoint(source)  # a mistyped path fails now, not at the first request
        registry = ClassifierRegistry.from_sources(cli.classifier, models_dir=cli.models_dir)
        registry.get()  # load (and on first run, convert) the default model before serving
    except ModelLoadError as error:
        sys.exit(f"error: {error}")
    segmenter_source = (
        LazySegmenter(cli.segmenter, cli.stage1) if cli.segmenter else LazySegmenter.from_models_dir(cli.models_dir)
    )
    demo = build_demo(registry, segmenter_source, max_file_bytes=int(cli.max_file_mb * 2**20))
    launch_app(demo, cli)
