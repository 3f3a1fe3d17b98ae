"""What every tab shares: the models on offer, reading uploads, and errors worded for people."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image

from common.checkpoint_files import ONNX_FILE, WEIGHTS_FILE
from common.checkpoints import ModelLoadError
from common.image_io import MAX_FILE_BYTES, ImageLoadError, load_image
from common.inspection_log import Decision, InspectionLog, InspectionLogError
from pipelines.decisions import anomaly_decision, classification_decision, segmentation_decision
from pipelines.explanation import ExplanationError
from pipelines.registry import ClassifierRegistry, LazySegmenter, SegmenterRegistry

logger = logging.getLogger("vispect.app")

# Image events run on the raw payload; see uploaded_image().
RAW_UPLOAD = {"preprocess": False}


@dataclass(frozen=True)
class TabContext:
    """What a tab's builder needs: the models the app serves, the upload limit, the page and the log.

    ``inspection_log`` is where every decision is recorded; None when the log is off.
    """

    registry: ClassifierRegistry
    # One LazySegmenter is taken too: it is then offered alone.
    segmenter: SegmenterRegistry | LazySegmenter
    demo: gr.Blocks
    max_file_bytes: int = MAX_FILE_BYTES
    inspection_log: InspectionLog | None = None
    # The Train tab's jobs (jobs.service.TrainingJobs); None turns the tab off.
    training: object | None = None
    # Every classifier dropdown built so far, so that a newly trained model can be added to all of them.
    model_dropdowns: list[gr.Dropdown] = field(default_factory=list)
    # Every segmenter dropdown built so far, for the same reason.
    segmenter_dropdowns: list[gr.Dropdown] = field(default_factory=list)
    # The anomaly detectors the Anomaly tab offers (pipelines.anomaly_detection.registry.AnomalyDetectors).
    anomaly_detectors: object | None = None

    def __post_init__(self):
        if not isinstance(self.segmenter, SegmenterRegistry):
            object.__setattr__(self, "segmenter", SegmenterRegistry(self.segmenter))  # frozen: set once, here

    def classifier_dropdown(self, **options) -> gr.Dropdown:
        """A "Classifier" dropdown over the registry's choices, set to the default model."""
        choices = [(choice.label, choice.source) for choice in self.registry.choices]
        dropdown = gr.Dropdown(choices=choices, value=self.registry.default, label="Classifier", **options)
        self.model_dropdowns.append(dropdown)
        return dropdown

    def segmenter_dropdown(self, **options) -> gr.Dropdown:
        """A "Segmenter" dropdown over the segmenters on offer, set to the default one."""
        dropdown = gr.Dropdown(
            choices=segmenter_choices(self.segmenter), value=self.segmenter.default, label="Segmenter", **options
        )
        self.segmenter_dropdowns.append(dropdown)
        return dropdown

    def read_upload(self, payload) -> Image.Image:
        """The RGB image behind a raw ``gr.Image`` payload, within the upload limit."""
        source = uploaded_image(payload)
        if source is None:
            raise gr.Error("No image yet: upload a photo, take one with the webcam, or paste one first.")
        return load_image(source, max_bytes=self.max_file_bytes)

    def record_decision(self, decision: Decision, image_bytes: bytes | None = None) -> int | None:
        """Log one decision (its image too when the log stores images); None when the log is off.

        Raises:
            common.inspection_log.InspectionLogError: the log cannot be written; the request must fail.
        """
        if self.inspection_log is None:
            return None
        return self.inspection_log.record(decision, image_bytes)

    def log_classification(self, result, classifier, payload, channel: str) -> int | None:
        """Log a classification of the upload behind ``payload``; None (and no work) when the log is off.

        Raises:
            common.inspection_log.InspectionLogError: the log cannot be written; the request must fail.
        """
        if self.inspection_log is None:
            return None
        image = uploaded_bytes(payload)
        decision = classification_decision(result, classifier, image, channel=channel, file_name=uploaded_name(payload))
        return self.record_decision(decision, image)

    def log_segmentation(self, result, segmenter, payload, channel: str, min_area) -> int | None:
        """Log a segmentation made with ``min_area``; None (and no work) when the log is off.

        Raises:
            common.inspection_log.InspectionLogError: the log cannot be written; the request must fail.
        """
        if self.inspection_log is None:
            return None
        image = uploaded_bytes(payload)
        decision = segmentation_decision(
            result, segmenter, image, channel=channel, file_name=uploaded_name(payload), min_area=min_area
        )
        return self.record_decision(decision, image)

    def log_anomaly(self, result, detector, payload, channel: str, threshold: float | None = None) -> int | None:
        """Log an anomaly score judged at ``threshold`` (normalised); None (and no work) when the log is off.

        Raises:
            common.inspection_log.InspectionLogError: the log cannot be written; the request must fail.
        """
        if self.inspection_log is None:
            return None
        image = uploaded_bytes(payload)
        decision = anomaly_decision(
            result, detector, image, channel=channel, file_name=uploaded_name(payload), threshold=threshold
        )
        return self.record_decision(decision, image)


def segmenter_choices(segmenters: SegmenterRegistry) -> list[tuple[str, str]]:
    return [(choice.label, choice.source) for choice in segmenters.choices]


def logged_note(inspection_id: int | None) -> str:
    """The line under an answer that says where it was logged ("" when the log is off)."""
    return "" if inspection_id is None else f"\n\nLogged as inspection #{inspection_id}."


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


def uploaded_bytes(payload) -> bytes | None:
    """The bytes of the file behind a raw ``gr.Image`` payload, as uploaded: what the log hashes and stores.

    Call it after :meth:`TabContext.read_upload`, which has applied the size limit.

    Raises:
        ImageLoadError: the file cannot be read.
    """
    source = uploaded_image(payload)
    if source is None or isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise ImageLoadError(source, f"it cannot be read ({error.strerror})") from error


def uploaded_name(payload) -> str | None:
    """The file name the user's browser gave an upload (None for a webcam shot or a pasted image)."""
    if isinstance(payload, dict):
        return payload.get("orig_name") or None
    return Path(payload).name if isinstance(payload, str) and payload else None


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
        except (ModelLoadError, ExplanationError, InspectionLogError) as error:
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


# Said under an explanation of a model that ONNX Runtime serves: Grad-CAM cannot run on the graph.
EAGER_EXPLANATION_NOTE = (
    f"This model is served by ONNX Runtime, so the heatmap comes from its PyTorch weights ({WEIGHTS_FILE}, kept "
    f"beside {ONNX_FILE}), which give the same answers: a class activation map needs the network's activations "
    "and gradients."
)


def explanation_markdown(explanation, headline: str | None = None, runtime: str = "torch") -> str:
    """What the heatmap shows and how far it can be trusted.

    Args:
        explanation: A ``pipelines.explanation.Explanation``.
        headline: The first sentence, saying what the map is of; by default the method, the layer,
            the target class and its probability.
        runtime: What serves the explained model (``"onnx"`` or ``"torch"``); for ONNX a sentence
            says that the explanation comes from the eager weights.
    """
    text = headline or (
        f"**{explanation.method}** on layer `{explanation.layer_name}` for **{explanation.target_label}** "
        f"(probability {explanation.target_score:.0%})."
    )
    if explanation.guided:
        text += " With pixel detail: the heatmap times guided-backpropagation gradients."
    if explanation.faithfulness is not None:
        text += f"\n\n**Faithfulness {explanation.faithfulness.score:+.2f}**: {explanation.faithfulness.sentence}"
    if runtime == "onnx":
        text += f"\n\n{EAGER_EXPLANATION_NOTE}"
    return text
