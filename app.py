"""Gradio app: classify images and inspect the model behind the answer.

Layout and wiring only; the work happens in ``pipelines/``. ``demo`` is built at import
without loading any model or starting a server, so tests can import and launch it.

    python app.py [--classifier DIR_OR_HUB_ID ...] [--share] [--port 7860]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from pipelines.checkpoints import ModelLoadError, resolve_checkpoint
from pipelines.examples import example_photos
from pipelines.image_io import MAX_FILE_BYTES, ImageLoadError
from pipelines.registry import ClassifierRegistry

logger = logging.getLogger("vispect.app")

TITLE = "Visual inspection toolkit"


class ImageFile(gr.Image):
    """An image input that hands the uploaded file, untouched, to our own loader.

    ``gr.Image`` opens every upload with PIL before our code runs, so a non-image upload
    fails inside Gradio with a generic "Error". Passing the path through lets
    ``pipelines.image_io.load_image`` give its specific message (and apply its caps).
    ``is_template`` makes Gradio reuse the stock image widget in the browser.
    """

    is_template = True

    def preprocess(self, payload):
        if payload is not None and payload.path is not None and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return super().preprocess(payload)


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
        except ModelLoadError as error:
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
    return text


def build_demo(registry: ClassifierRegistry) -> gr.Blocks:
    """The Blocks UI; ``registry`` says which classifiers the dropdowns offer."""

    @user_facing
    def classify_image(image_path: str | None, model: str, top_k: float) -> dict[str, float]:
        """Classify an uploaded image with the chosen model; returns {label: probability}."""
        if not image_path:
            raise gr.Error("No image yet: upload a photo, take one with the webcam, or paste one first.")
        classifier = registry.get(model)
        return scores_for_label(classifier.classify(image_path, top_k=int(top_k)))

    @user_facing
    def describe_model(model: str) -> str:
        """Architecture, size, preprocessing and saved metrics of the chosen model."""
        return model_markdown(registry.get(model).describe())

    choices = [(choice.label, choice.source) for choice in registry.choices]
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nIdentify objects in images, offline.")
        model = gr.Dropdown(choices=choices, value=registry.default, label="Classifier")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = ImageFile(
                        type="filepath", sources=["upload", "webcam", "clipboard"], label="Image", height=360
                    )
                    top_k = gr.Slider(1, 10, value=5, step=1, label="Classes to show")
                    classify_button = gr.Button("Classify", variant="primary")
                with gr.Column():
                    label = gr.Label(label="Prediction", show_label=True)
                    gr.Markdown(
                        "Scores are the model's softmax probabilities. A score is only as trustworthy as "
                        "the model's calibration: the default ImageNet model is not calibrated for your images."
                    )
            gr.Examples(examples=[[str(path)] for path in example_photos()], inputs=[image], label="Example photos")
        with gr.Tab("Model"):
            details = gr.Markdown("Select a classifier to see its details.")
            refresh = gr.Button("Show model details")

        classify_button.click(classify_image, [image, model, top_k], label, api_name="classify")
        image.upload(classify_image, [image, model, top_k], label, api_name=False)
        refresh.click(describe_model, [model], details, api_name="describe_model")
        model.change(describe_model, [model], details, api_name=False)
        demo.load(describe_model, [model], details, api_name=False)
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
    parser.add_argument("--models-dir", default="models", help="folder searched for classifier checkpoints")
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
demo = build_demo(registry)

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
    demo = build_demo(registry)
    launch_app(demo, cli)
