"""The Gradio app's layout: one module per tab, each building its components, handlers and events.

``build_demo`` makes the page and calls each tab's ``build(context)`` inside the tabs; a new
tab is a new module here plus one line below. Nothing loads a model until a request needs it.
"""

from __future__ import annotations

import gradio as gr

from common.image_io import MAX_FILE_BYTES
from common.inspection_log import InspectionLog
from pipelines.registry import ClassifierRegistry, LazySegmenter, SegmenterRegistry
from ui import anomaly, classify, explain, history, inspect, model, segment, train
from ui.common import TabContext

TITLE = "Visual inspection toolkit"


def build_demo(
    registry: ClassifierRegistry,
    segmenter_source: SegmenterRegistry | LazySegmenter | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    inspection_log: InspectionLog | None = None,
    training=None,
    anomaly_detectors=None,
) -> gr.Blocks:
    """The Blocks UI; ``registry`` says which classifiers the dropdowns offer, ``segmenter_source`` which segmenters.

    ``segmenter_source`` is a ``SegmenterRegistry`` (the app's: segmenters trained in the Train tab
    join it) or one ``LazySegmenter`` (offered alone).

    Every decision a tab makes is recorded in ``inspection_log``, and the History tab reads it; None
    records nothing (the History tab then says that the log is off). ``training`` (a
    ``jobs.service.TrainingJobs``) runs the Train tab's jobs; None turns that tab off.
    ``anomaly_detectors`` (a ``pipelines.anomaly_detection.registry.AnomalyDetectors``) are the
    Anomaly tab's detectors; None offers none (the tab then says how to train one).
    """
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nIdentify objects in images, see why the model decided, and how far to trust it.")
        context = TabContext(
            registry,
            segmenter_source or LazySegmenter(None),
            demo,
            max_file_bytes,
            inspection_log,
            training,
            anomaly_detectors=anomaly_detectors,
        )
        with gr.Tabs() as tabs:
            classify_tab = classify.build(context)
            explain_tab = explain.build(context)
            segment.build(context)
            anomaly.build(context)
            inspect.build(context)
            history.build(context)
            model.build(context)
            train.build(context)
        explain_tab.receive(classify_tab.send_button, classify_tab.image, classify_tab.model, tabs)
    return demo
