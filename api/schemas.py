"""What the REST API answers: pydantic models, so ``/openapi.json`` and ``/docs`` describe every field."""

from __future__ import annotations

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
    inspection_id: str | None = Field(None, description="Reserved for the inspection log; always null for now.")


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
    inspection_id: str | None = Field(None, description="Reserved for the inspection log; always null for now.")


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
    api_key_required: bool = Field(description="Whether classify and segment need X-API-Key or a Bearer token.")
