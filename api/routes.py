"""The REST endpoints: read the upload, call the pipeline in a worker thread, convert its result.

Model calls run in worker threads (``anyio.to_thread``) behind one capacity limiter of the app's
``--concurrency``, so the event loop keeps serving Gradio and health checks while models work,
and a burst of REST requests waits its turn instead of oversubscribing the CPU.
"""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, File, Form, Security, UploadFile, params
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError, api_route_class, image_error
from api.fingerprints import Fingerprints
from api.schemas import (
    AvailableModels,
    ClassifierChoice,
    ClassifyResponse,
    DefectOut,
    ErrorResponse,
    HealthResponse,
    ImageInfo,
    ModelRef,
    PredictionOut,
    SegmenterChoice,
    SegmenterModels,
    SegmentResponse,
    Stage1Verdict,
)
from common.checkpoints import ModelLoadError
from common.image_io import MAX_FILE_BYTES, MAX_PIXELS, ImageLoadError, load_image
from pipelines.registry import ClassifierRegistry, LazySegmenter

PREFIX = "/api/v1"
API_KEY_HEADER = "X-API-Key"
DEFAULT_TOP_K = 5
ROOT = Path(__file__).resolve().parents[1]

_ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Empty or corrupt image, or a body that is not multipart/form-data",
        401: "API key missing or wrong (only when the server has one)",
        404: "Unknown model",
        413: "File over --max-file-mb, or image over the pixel limit",
        415: "Not an image in a supported format",
        422: "Missing 'file', or a bad form field",
        503: "The model cannot be loaded (the message says why)",
    }.items()
}

# The form fields, declared once so that the OpenAPI schema describes them.
ImageFile = Annotated[UploadFile, File(description="The image: JPEG, PNG, WebP, BMP, GIF or TIFF.")]
ModelField = Annotated[str | None, Form(description="A classifier the server offers (GET health lists them).")]
TopKField = Annotated[
    int | None, Form(ge=1, description=f"How many classes to return, most likely first (default {DEFAULT_TOP_K}).")
]


@dataclass(frozen=True)
class ApiLimits:
    """What one request may carry, and how many model calls run at once."""

    max_file_bytes: int = MAX_FILE_BYTES
    max_pixels: int = MAX_PIXELS
    concurrency: int = 2


def versions() -> dict[str, str | None]:
    """The app's version (pyproject.toml) and its main libraries', read without importing them."""
    try:
        app_version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        app_version = None  # e.g. the container, which copies the code but not pyproject.toml
    found = {"app": app_version}
    for name in ("torch", "transformers", "onnxruntime", "gradio"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def api_key_guard(api_key: str) -> params.Depends:
    """A dependency refusing requests without ``api_key`` in X-API-Key or ``Authorization: Bearer``."""
    expected = api_key.encode()

    def require_api_key(
        header: Annotated[str | None, Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(HTTPBearer(auto_error=False))],
    ) -> None:
        given = header or (bearer.credentials if bearer else None)
        # compare_digest takes as long for a near miss as for a wild guess.
        if given is None or not hmac.compare_digest(given.encode(), expected):
            raise ApiError(
                401,
                "unauthorized",
                f"This server requires an API key: send it in the {API_KEY_HEADER} header "
                "or as 'Authorization: Bearer KEY'.",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return Depends(require_api_key)


class InspectionService:
    """What the endpoints share: the models, the limits, the fingerprints and the worker limiter."""

    def __init__(self, registry: ClassifierRegistry, segmenter: LazySegmenter, limits: ApiLimits):
        self.registry = registry
        self.segmenter = segmenter
        self.limits = limits
        self.fingerprints = Fingerprints()
        self.limiter = anyio.CapacityLimiter(limits.concurrency)

    async def in_worker(self, function, *args):
        """Run ``function(*args)`` in a worker thread, at most ``limits.concurrency`` at a time."""
        return await anyio.to_thread.run_sync(partial(function, *args), limiter=self.limiter)

    def check_model(self, source: str) -> None:
        available = [choice.source for choice in self.registry.choices]
        if source not in available:
            raise ApiError(
                404,
                "unknown_model",
                f"Unknown model '{source}'. Available: {', '.join(available)} (GET {PREFIX}/health lists them).",
            )

    def read_image(self, data: bytes, filename: str):
        try:
            return load_image(data, max_bytes=self.limits.max_file_bytes, max_pixels=self.limits.max_pixels)
        except ImageLoadError as error:
            raise image_error(error, data, filename, self.limits.max_file_bytes, self.limits.max_pixels) from None

    def model_ref(self, pipeline) -> ModelRef:
        return ModelRef(source=pipeline.source, fingerprint=self.fingerprints.of(pipeline), runtime=pipeline.runtime)

    def classify(self, data: bytes, filename: str, source: str, top_k: int | None) -> ClassifyResponse:
        image = self.read_image(data, filename)
        try:
            classifier = self.registry.get(source)
        except ModelLoadError as error:
            raise ApiError(503, "model_unavailable", str(error)) from None
        classes = len(classifier.id2label)
        if top_k is None:
            top_k = min(DEFAULT_TOP_K, classes)
        elif top_k > classes:
            raise ApiError(
                422, "bad_top_k", f"top_k is {top_k}, but model '{source}' has {classes} classes; send 1 to {classes}."
            )
        result = classifier.classify(image, top_k=top_k)
        return ClassifyResponse(
            predictions=[PredictionOut(label=p.label, score=p.score, index=p.index) for p in result.predictions],
            unknown=result.unknown,
            model=self.model_ref(classifier),
            image=image_info(data, image),
        )

    def segment(self, data: bytes, filename: str) -> SegmentResponse:
        image = self.read_image(data, filename)
        try:
            segmenter = self.segmenter.get()
        except ModelLoadError as error:
            raise ApiError(503, "segmenter_unavailable", str(error)) from None
        result = segmenter.segment(image)
        stage1 = None
        if result.stage1 is not None:
            ruled_out = [region.label for region in result.regions if region.ruled_out]
            stage1 = Stage1Verdict(
                defective=len(ruled_out) < len(result.regions), ruled_out=ruled_out, probabilities=result.stage1
            )
        return SegmentResponse(
            defective=result.defective,
            defects=[
                DefectOut(
                    class_id=region.class_id,
                    label=region.label,
                    area_pixels=int(region.mask.sum()),
                    area_fraction=region.area_fraction,
                    confidence=region.confidence,
                    rle=region.rle,
                    ruled_out=region.ruled_out,
                )
                for region in result.regions
            ],
            stage1=stage1,
            models=SegmenterModels(
                segmenter=self.model_ref(segmenter),
                stage1=None if segmenter.stage1 is None else self.model_ref(segmenter.stage1),
            ),
            image=image_info(data, image),
        )

    def health(self, api_key_required: bool, found_versions: dict[str, str | None]) -> HealthResponse:
        default = self.registry.default
        return HealthResponse(
            status="ok",
            models=AvailableModels(
                classifiers=[
                    ClassifierChoice(source=choice.source, label=choice.label, default=choice.source == default)
                    for choice in self.registry.choices
                ],
                segmenter=SegmenterChoice(
                    available=self.segmenter.model_dir is not None,
                    segmenter=self.segmenter.model_dir,
                    stage1=self.segmenter.stage1_dir,
                ),
            ),
            versions=found_versions,
            runtime=self.registry.runtime,
            api_key_required=api_key_required,
        )


def image_info(data: bytes, image) -> ImageInfo:
    return ImageInfo(sha256=hashlib.sha256(data).hexdigest(), width=image.width, height=image.height)


async def read_upload(file: UploadFile, max_bytes: int) -> tuple[bytes, str]:
    """The upload's bytes, at most one over ``max_bytes`` (enough for the loader to refuse it), and its name."""
    return await file.read(max_bytes + 1), file.filename or "upload"


def create_api_router(
    registry: ClassifierRegistry,
    segmenter: LazySegmenter | None = None,
    limits: ApiLimits | None = None,
    api_key: str | None = None,
) -> APIRouter:
    """The ``/api/v1`` routes over the models the app serves; with ``api_key``, all but health require it."""
    limits = limits or ApiLimits()
    service = InspectionService(registry, segmenter or LazySegmenter(None), limits)
    found_versions = versions()
    guarded = [api_key_guard(api_key)] if api_key else []
    router = APIRouter(prefix=PREFIX, route_class=api_route_class(limits.max_file_bytes), tags=["inspection"])

    @router.get("/health", response_model=HealthResponse, summary="Server status, models and versions")
    def health() -> HealthResponse:
        return service.health(bool(api_key), found_versions)

    @router.post(
        "/classify",
        response_model=ClassifyResponse,
        responses=_ERRORS,
        dependencies=guarded,
        summary="Classify one image",
    )
    async def classify(file: ImageFile, model: ModelField = None, top_k: TopKField = None) -> ClassifyResponse:
        source = model or registry.default
        service.check_model(source)
        data, filename = await read_upload(file, limits.max_file_bytes)
        return await service.in_worker(service.classify, data, filename, source, top_k)

    @router.post(
        "/segment",
        response_model=SegmentResponse,
        responses=_ERRORS,
        dependencies=guarded,
        summary="Outline the defects in one steel-strip image",
    )
    async def segment(file: ImageFile) -> SegmentResponse:
        data, filename = await read_upload(file, limits.max_file_bytes)
        return await service.in_worker(service.segment, data, filename)

    return router
