"""Pipeline results -> the inspection log's ``Decision``: the answer, its scores, flags and model.

Flags say why a person should look (``common.inspection_log.FLAGS``):

- ``unknown``: the open-set rule said the image shows none of the classes;
- ``low_confidence``: the top score is below ``low_confidence`` (raw or calibrated, as served); for a
  segmentation, ``pipelines.segmentation.defect_confidence`` (the Inspect tab's): the defect pixels'
  mean confidence, or for a clean strip one minus stage 1's highest defect probability; for an
  anomaly score, being within ``ANOMALY_MARGIN`` (10%) of the line on either side, where the
  held-out good images' scores and small defects' scores overlap most;
- ``defective``: the segmenter painted defects, or an anomaly detector's score is above its line;
- ``disagree``: two models contradict each other: stage 1 says a defect type is present but the
  segmenter paints nothing, the segmenter alone paints defects that stage 1 ruled out (known
  only when the result kept its probabilities), or a second classifier's top class differs.

The model fingerprint is ``pipelines.fingerprints.model_fingerprint``: the SHA-256 of the files
that serve the model (``model.onnx`` under ONNX Runtime, the safetensors under PyTorch), the same
string the REST API answers with, so a row says which weights decided even after a checkpoint
directory is overwritten.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.anomaly_threshold import false_reject_rate
from common.checkpoint_files import MIN_AREA_KEY
from common.image_store import image_sha256
from common.inspection_log import Decision
from pipelines.fingerprints import model_fingerprint

if TYPE_CHECKING:
    from pipelines.anomaly_detection import AnomalyDetector, AnomalyResult
    from pipelines.classification import Classification, ImageClassifier
    from pipelines.segmentation import DefectSegmenter, Segmentation

__all__ = [
    "ANOMALY_MARGIN",
    "DEFAULT_LOW_CONFIDENCE",
    "anomaly_decision",
    "classification_decision",
    "image_sha256",
    "segmentation_decision",
]

# Below this top score a classification waits for review. 0.5: under it another class (or several
# together) is at least as likely as the answer.
DEFAULT_LOW_CONFIDENCE = 0.5
# An anomaly score this close to the line (a share of it, either side) is flagged low_confidence:
# 0.9 to 1.1 times the threshold. The threshold is a quantile of a few dozen good images, so a
# score this near it could fall on the other side with another few good images, or another light.
ANOMALY_MARGIN = 0.1
# An anomaly decision's two answers (and so the labels a reviewer can give it).
ANOMALY_ANSWERS = ("good", "anomalous")
# Scores kept per classification: the top ones, enough to see the runner-up without storing 1000.
TOP_SCORES = 5


def classification_decision(
    result: Classification,
    classifier: ImageClassifier,
    image: bytes,
    *,
    channel: str,
    file_name: str | None = None,
    low_confidence: float = DEFAULT_LOW_CONFIDENCE,
    other: Classification | None = None,
) -> Decision:
    """The log's record of one classification.

    Args:
        result: ``classifier.classify(...)`` of the image.
        classifier: The classifier that answered (its source, weights and thresholds are recorded).
        image: The uploaded file's bytes (hashed; the log may store them).
        channel: The tab or ``"api"`` that asked.
        file_name: The name the user gave the file.
        low_confidence: Top scores below this are flagged ``low_confidence``.
        other: A second classifier's answer for the same image; a different top class is ``disagree``.
    """
    best = result.predictions[0]
    flags = []
    if result.unknown:
        flags.append("unknown")
    if best.score < low_confidence:
        flags.append("low_confidence")
    if other is not None and other.predictions and other.predictions[0].label != best.label:
        flags.append("disagree")
    trust = classifier.trust
    thresholds = {"low_confidence": low_confidence, "temperature": trust.temperature}
    if trust.rejection is not None:
        # The open-set rule, with this image's score on it beside the threshold it was held to.
        thresholds["rejection"] = {"method": trust.rejection.method, "threshold": float(trust.rejection.threshold)}
        if result.open_set_score is not None:
            thresholds["rejection"]["score"] = float(result.open_set_score)
    if trust.thresholds is not None:
        thresholds["per_class"] = [float(value) for value in trust.thresholds]
    scores = {prediction.label: float(prediction.score) for prediction in result.predictions[:TOP_SCORES]}
    return Decision(
        task="classify",
        channel=channel,
        image_sha256=image_sha256(image),
        file_name=file_name,
        model_source=classifier.source,
        model_fingerprint=model_fingerprint(classifier),
        thresholds=thresholds,
        answer=best.label,
        confidence=float(best.score),
        scores=scores,
        unknown=bool(result.unknown),
        flags=tuple(flags),
    )


def segmentation_decision(
    result: Segmentation,
    segmenter: DefectSegmenter,
    image: bytes,
    *,
    channel: str,
    file_name: str | None = None,
    min_area: dict[int, int] | int | None = None,
    low_confidence: float = DEFAULT_LOW_CONFIDENCE,
) -> Decision:
    """The log's record of one segmentation (with its stage-1 verdict when there is a stage 1).

    Args:
        result: ``segmenter.segment(...)`` of the image; with ``return_probabilities=True`` the
            "segmenter alone paints what stage 1 ruled out" disagreement can be seen too.
        segmenter: The segmenter that answered.
        image: The uploaded file's bytes.
        channel: The tab or ``"api"`` that asked.
        file_name: The name the user gave the file.
        min_area: The minimum areas the call used (None: the tuned ones).
        low_confidence: Answers less sure than this (``defect_confidence``) are flagged ``low_confidence``.
    """
    from pipelines.segmentation import defect_confidence

    found = [region for region in result.regions if region.present]
    answer = "defective: " + ", ".join(region.label for region in found) if found else "clean"
    scores = {}
    for region in result.regions:
        scores[region.label] = {"area": float(region.area_fraction), "confidence": float(region.confidence)}
        if result.stage1 is not None:
            scores[region.label]["stage1"] = float(result.stage1[region.label])
    confidence = defect_confidence(result)
    flags = ["defective"] if result.defective else []
    if confidence is not None and confidence < low_confidence:
        flags.append("low_confidence")
    if result.stage1 is not None and _stages_disagree(result):
        flags.append("disagree")
    areas = segmenter.min_areas(min_area)
    thresholds = {
        MIN_AREA_KEY: {region.label: areas[region.class_id] for region in result.regions},
        "low_confidence": low_confidence,
    }
    stage1 = segmenter.stage1
    fingerprint = model_fingerprint(segmenter)
    source = segmenter.source
    if stage1 is not None:
        # Not describe(): it would count the parameters and read processor geometry on every request.
        thresholds["stage1"] = {label: float(value) for label, value in segmenter.stage1_thresholds.items()}
        source = f"{segmenter.source} + {stage1.source}"
        fingerprint = f"{fingerprint}+{model_fingerprint(stage1)}"
    return Decision(
        task="segment",
        channel=channel,
        image_sha256=image_sha256(image),
        file_name=file_name,
        model_source=source,
        model_fingerprint=fingerprint,
        thresholds=thresholds,
        answer=answer,
        confidence=None if confidence is None else float(confidence),
        scores=scores,
        defective=bool(result.defective),
        flags=tuple(flags),
    )


def _stages_disagree(result: Segmentation) -> bool:
    """Stage 1 keeps a defect type but nothing is painted, or the segmenter alone painted a ruled-out type."""
    kept_by_stage1 = [region for region in result.regions if not region.ruled_out]
    if kept_by_stage1 and not result.defective:
        return True
    if result.probabilities is not None:
        # Before stage 1 and the minimum areas: the segmenter's own argmax.
        painted = set(result.probabilities.argmax(axis=0).ravel().tolist()) - {0}
        return any(region.ruled_out and region.class_id in painted for region in result.regions)
    return False


def anomaly_decision(
    result: AnomalyResult,
    detector: AnomalyDetector,
    image: bytes,
    *,
    channel: str,
    file_name: str | None = None,
    threshold: float | None = None,
    margin: float = ANOMALY_MARGIN,
) -> Decision:
    """The log's record of one anomaly score, judged at ``threshold``.

    Args:
        result: ``detector.detect(...)`` of the image.
        detector: The detector that scored it.
        image: The uploaded file's bytes.
        channel: The tab or ``"api"`` that asked.
        file_name: The name the user gave the file.
        threshold: The line the answer was given at, normalised (1.0, the default, is the one fitted
            on good images; the Anomaly tab's slider may move it).
        margin: Scores within this share of the line, either side, are flagged ``low_confidence``.
    """
    line = 1.0 if threshold is None else float(threshold)
    anomalous = result.anomalous_at(line)
    flags = ["defective"] if anomalous else []
    if abs(result.score - line) <= margin * line:
        flags.append("low_confidence")
    held_out = detector.held_out_scores(result.product)
    thresholds = {
        "threshold": line,
        "raw_threshold": line * result.threshold,
        "fitted_raw_threshold": result.threshold,
        "low_confidence_margin": margin,
    }
    if held_out:
        # What the line costs on good images, so a moved slider's price is on the record.
        thresholds["held_out_false_reject_rate"] = false_reject_rate(held_out, line * result.threshold)
    return Decision(
        task="anomaly",
        channel=channel,
        image_sha256=image_sha256(image),
        file_name=file_name,
        model_source=detector.source,
        model_fingerprint=model_fingerprint(detector),
        thresholds=thresholds,
        answer=ANOMALY_ANSWERS[int(bool(anomalous))],
        scores={
            "product": result.product,
            "score": float(result.score),
            "raw_score": float(result.raw_score),
            "area": result.area_fraction_at(line),
        },
        defective=anomalous,
        flags=tuple(flags),
    )
