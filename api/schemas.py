"""What the REST API answers: pydantic models, so ``/openapi.json`` and ``/docs`` describe every field."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. 'file_too_large' or 'unknown_model'.")
    message: str = Field(description="What is wrong and how to fix it, for people.")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer of ``/api/v1``."""

    error: ErrorDetail


class ModelRef(BaseModel):
    """Which model answered, and exactly which weights."""

    source: str = Field(description="The model as the server names it: 'default', a checkpoint directory or hub id.")
    fingerprint: str | None = Field(
        description="SHA-256 (hex) of the weight file(s) that ran the forward pass: model.onnx under ONNX Runtime, "
        "the safetensors weights under PyTorch (several files hashed in name order). Null for a hub id served "
        "from the Hugging Face cache."
    )
    runtime: str = Field(description="What ran the forward pass: 'onnx' (ONNX Runtime) or 'torch' (PyTorch).")


class ImageInfo(BaseModel):
    sha256: str = Field(description="SHA-256 (hex) of the uploaded file's bytes.")
    width: int = Field(description="Width in pixels, after the EXIF orientation is applied.")
    height: int = Field(description="Height in pixels, after the EXIF orientation is applied.")


class PredictionOut(BaseModel):
    label: str = Field(description="Class name from the model's id2label.")
    score: float = Field(description="Probability (calibrated when the model carries a temperature).")
    index: int = Field(description="Class index in the model's output.")


class ClassifyResponse(BaseModel):
    predictions: list[PredictionOut] = Field(description="The top_k classes, most likely first.")
    unknown: bool = Field(description="True when the model's open-set rule says the image is none of its classes.")
    model: ModelRef
    image: ImageInfo
    inspection_id: int | None = Field(
        None,
        description="This decision's id in the inspection log (GET /api/v1/inspections/{id}); null when the "
        "server runs with --log-db off.",
    )


class DefectOut(BaseModel):
    class_id: int = Field(description="Class index in the segmenter's label map (0 is the background).")
    label: str
    area_pixels: int = Field(description="Pixels of this class in the final outline.")
    area_fraction: float = Field(description="area_pixels / (width * height).")
    confidence: float = Field(description="Mean max-softmax probability over the class's pixels; 0 when empty.")
    rle: str = Field(
        description="Kaggle Severstal run-length encoding of the mask: 1-based, column-major 'start length' pairs; "
        "'' when empty."
    )
    ruled_out: bool = Field(description="Stage 1 said this class is absent, so its pixels went to the background.")


class Stage1Verdict(BaseModel):
    """What the stage-1 classifier ('which defect types are present') said before segmentation."""

    defective: bool = Field(description="Stage 1 kept at least one defect class.")
    ruled_out: list[str] = Field(description="Defect classes stage 1 removed from the outline.")
    probabilities: dict[str, float] = Field(description="Stage-1 probability of each defect class.")


class SegmenterModels(BaseModel):
    segmenter: ModelRef
    stage1: ModelRef | None = Field(description="Null when the segmenter runs without a stage-1 classifier.")


class SegmentResponse(BaseModel):
    defective: bool = Field(description="Any defect pixels in the final outline.")
    defects: list[DefectOut] = Field(description="One entry per defect class, in class order, present or not.")
    stage1: Stage1Verdict | None
    models: SegmenterModels
    image: ImageInfo
    inspection_id: int | None = Field(
        None, description="This decision's id in the inspection log; null when the server runs with --log-db off."
    )


class ClassifierChoice(BaseModel):
    source: str = Field(description="What to send as the classify 'model' field.")
    label: str
    default: bool


class SegmenterChoice(BaseModel):
    available: bool
    segmenter: str | None
    stage1: str | None


class AvailableModels(BaseModel):
    classifiers: list[ClassifierChoice]
    segmenter: SegmenterChoice


class HealthResponse(BaseModel):
    status: str = Field(description="'ok' whenever the server answers; models load on first use.")
    models: AvailableModels
    versions: dict[str, str | None] = Field(description="app, torch, transformers, onnxruntime, gradio.")
    runtime: str = Field(description="The server's --runtime setting: 'auto', 'torch' or 'onnx'.")
    api_key_required: bool = Field(
        description="Whether classify, segment and the inspection routes need X-API-Key or a Bearer token."
    )
    inspection_log: bool = Field(description="Whether decisions are recorded (false when started with --log-db off).")


class ReviewOut(BaseModel):
    """A person's verdict on a logged decision."""

    inspection_id: int
    label: str | None = Field(
        description="The class the image really shows: the answer when accepted, the reviewer's label otherwise; "
        "null for an accepted 'unknown' (the image is of none of the classes)."
    )
    accepted: bool = Field(description="The reviewer accepted the model's answer.")
    reviewer: str
    created_at: datetime = Field(description="When the review was stored (UTC).")


class ReviewIn(BaseModel):
    """A review: accept the answer, or give the right label."""

    label: str | None = Field(None, description="The class the image shows; required unless accept is true.")
    reviewer: str = Field(min_length=1, max_length=200, description="Who reviewed (stored as given).")
    accept: bool = Field(False, description="The model's answer is right; label is then ignored.")


class InspectionOut(BaseModel):
    """One logged decision with its latest review."""

    id: int
    created_at: datetime = Field(description="When the decision was made (UTC).")
    task: str = Field(description="'classify' or 'segment'.")
    channel: str = Field(description="Where it was asked: 'api', or the app tab ('classify', 'explain', ...).")
    image_sha256: str = Field(description="SHA-256 (hex) of the image file's bytes, as uploaded.")
    file_name: str | None = Field(description="The file name the client gave.")
    model_source: str = Field(description="The model as the server names it (segmentation: 'segmenter + stage1').")
    model_fingerprint: str | None = Field(
        description="The same SHA-256 the classify and segment answers give in model.fingerprint."
    )
    thresholds: dict = Field(description="The rules in force: low_confidence, temperature, rejection, min_area, ...")
    answer: str = Field(description="The top label, or for a segmentation 'clean' / 'defective: <classes>'.")
    confidence: float | None = Field(description="The top score (segmentation: the most confident defect's).")
    scores: dict = Field(description="The top scores (segmentation: area, confidence and stage-1 score per class).")
    unknown: bool = Field(description="The open-set rule said the image is none of the classes.")
    defective: bool | None = Field(description="Segmentation: any defect in the outline; null for a classification.")
    flags: list[str] = Field(description="Why it waits for review: unknown, low_confidence, defective, disagree.")
    image_stored: bool = Field(description="The image is kept in the server's image store (--store-images).")
    review: ReviewOut | None = Field(description="The latest review; null while unreviewed.")


class InspectionList(BaseModel):
    inspections: list[InspectionOut] = Field(description="Newest first.")
    limit: int
    offset: int
