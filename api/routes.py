"""The REST endpoints: read the upload, call the pipeline in a worker thread, log and convert its result.

Model calls run in worker threads (``anyio.to_thread``) behind one capacity limiter of the app's
``--concurrency``, so the event loop keeps serving Gradio and health checks while models work,
and a burst of REST requests waits its turn instead of oversubscribing the CPU. Log writes and
reads run in worker threads outside that limiter: a slow database must not hold a model's slot.
"""

from __future__ import annotations

import hmac
import tomllib
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Body, Depends, File, Form, Query, Security, UploadFile, params
from fastapi import Path as PathParam
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError, api_route_class, image_error
from api.schemas import (
    AvailableModels,
    ClassifierChoice,
    ClassifyResponse,
    DefectOut,
    ErrorResponse,
    HealthResponse,
    ImageInfo,
    InspectionList,
    InspectionOut,
    ModelRef,
    PredictionOut,
    ReviewIn,
    ReviewOut,
    SegmenterChoice,
    SegmenterModels,
    SegmentResponse,
    Stage1Verdict,
)
from common.checkpoints import ModelLoadError
from common.image_io import MAX_FILE_BYTES, MAX_PIXELS, ImageLoadError, load_image
from common.image_store import image_sha256
from common.inspection_log import FLAGS, TASKS, Decision, Inspection, InspectionLog, InspectionLogError, Review
from pipelines.decisions import classification_decision, segmentation_decision
from pipelines.fingerprints import model_fingerprint
from pipelines.registry import ClassifierRegistry, LazySegmenter

PREFIX = "/api/v1"
API_KEY_HEADER = "X-API-Key"
DEFAULT_TOP_K = 5
DEFAULT_PAGE, MAX_PAGE = 50, 500
ROOT = Path(__file__).resolve().parents[1]


def _error_responses(descriptions: dict[int, str]) -> dict[int, dict]:
    """OpenAPI ``responses`` for these statuses, each with the JSON error body."""
    return {status: {"model": ErrorResponse, "description": text} for status, text in descriptions.items()}


_ERRORS = _error_responses(
    {
        400: "Empty or corrupt image, or a body that is not multipart/form-data",
        401: "API key missing or wrong (only when the server has one)",
        404: "Unknown model",
        413: "File over --max-file-mb, or image over the pixel limit",
        415: "Not an image in a supported format",
        422: "Missing 'file', or a bad form field",
        503: "The model cannot be loaded, or the inspection log cannot be written (the message says why)",
    }
)
_LOG_ERRORS = _error_responses(
    {
        401: "API key missing or wrong (only when the server has one)",
        404: "No inspection with this id",
        422: "A bad query parameter or review body",
        503: "The log is off (--log-db off), or its database cannot be read or written",
    }
)

# The form fields, declared once so that the OpenAPI schema describes them.
ImageFile = Annotated[UploadFile, File(description="The image: JPEG, PNG, WebP, BMP, GIF or TIFF.")]
ModelField = Annotated[str | None, Form(description="A classifier the server offers (GET health lists them).")]
TopKField = Annotated[
    int | None, Form(ge=1, description=f"How many classes to return, most likely first (default {DEFAULT_TOP_K}).")
]
InspectionId = Annotated[int, PathParam(ge=1, description="The id classify or segment returned as inspection_id.")]


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
    """What the endpoints share: the models, the limits, the log and the worker limiter.

    ``inspection_log`` None: nothing is recorded, and the inspection routes answer 503.
    """

    def __init__(
        self,
        registry: ClassifierRegistry,
        segmenter: LazySegmenter,
        limits: ApiLimits,
        inspection_log: InspectionLog | None = None,
    ):
        self.registry = registry
        self.segmenter = segmenter
        self.limits = limits
        self.log = inspection_log
        self.limiter = anyio.CapacityLimiter(limits.concurrency)

    async def in_worker(self, function, *args):
        """Run ``function(*args)`` in a worker thread, at most ``limits.concurrency`` at a time."""
        return await anyio.to_thread.run_sync(partial(function, *args), limiter=self.limiter)

    # -- the log --

    def require_log(self) -> InspectionLog:
        if self.log is None:
            raise ApiError(
                503,
                "log_disabled",
                "The inspection log is off: this server was started with --log-db off. Start it with --log-db URL "
                "(or without the flag, for the default SQLite file) to record and review decisions.",
            )
        return self.log

    async def record(self, decision: Decision | None, data: bytes) -> int | None:
        """Log a decision (None when the log is off), outside the model limiter; a failed write is a 503."""
        if self.log is None or decision is None:
            return None
        try:
            return await anyio.to_thread.run_sync(self.log.record, decision, data)
        except InspectionLogError as error:
            # The answer is not sent: a decision the log could not keep must not look recorded.
            raise ApiError(503, "log_unavailable", str(error)) from None

    def read_log(self, function, *args, **options):
        """Call a reading method of the log; its failure is a 503 naming the database."""
        try:
            return function(*args, **options)
        except InspectionLogError as error:
            raise ApiError(503, "log_unavailable", str(error)) from None

    def inspections(self, **filters) -> list[InspectionOut]:
        log = self.require_log()
        return [inspection_out(item) for item in self.read_log(log.list, **filters)]

    def inspection(self, inspection_id: int) -> InspectionOut:
        log = self.require_log()
        found = self.read_log(log.get, inspection_id)
        if found is None:
            raise ApiError(
                404,
                "unknown_inspection",
                f"There is no inspection {inspection_id} (GET {PREFIX}/inspections lists them).",
            )
        return inspection_out(found)

    def review(self, inspection_id: int, review: ReviewIn) -> ReviewOut:
        self.inspection(inspection_id)  # 404 first: a review of nothing is not a bad body
        if not review.reviewer.strip():
            raise ApiError(422, "bad_reviewer", "Field 'reviewer' is blank: send who reviewed.")
        if not review.accept and not (review.label or "").strip():
            raise ApiError(
                422, "bad_review", "Send 'label' (the class the image shows) or 'accept': true to accept the answer."
            )
        stored = self.read_log(self.log.review, inspection_id, review.label, review.reviewer, review.accept)
        return review_out(inspection_id, stored)

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
        return ModelRef(source=pipeline.source, fingerprint=model_fingerprint(pipeline), runtime=pipeline.runtime)

    def classify(
        self, data: bytes, filename: str, source: str, top_k: int | None
    ) -> tuple[ClassifyResponse, Decision | None]:
        """The answer, and the log's record of it (None when the log is off)."""
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
        decision = None
        if self.log is not None:
            decision = classification_decision(result, classifier, data, channel="api", file_name=filename)
        answer = ClassifyResponse(
            predictions=[PredictionOut(label=p.label, score=p.score, index=p.index) for p in result.predictions],
            unknown=result.unknown,
            model=self.model_ref(classifier),
            image=image_info(data, image),
        )
        return answer, decision

    def segment(self, data: bytes, filename: str) -> tuple[SegmentResponse, Decision | None]:
        """The answer, and the log's record of it (None when the log is off)."""
        image = self.read_image(data, filename)
        try:
            segmenter = self.segmenter.get()
        except ModelLoadError as error:
            raise ApiError(503, "segmenter_unavailable", str(error)) from None
        # The probabilities let the log see the segmenter painting a class that stage 1 ruled out.
        result = segmenter.segment(image, return_probabilities=self.log is not None)
        decision = None
        if self.log is not None:
            decision = segmentation_decision(result, segmenter, data, channel="api", file_name=filename)
        stage1 = None
        if result.stage1 is not None:
            ruled_out = [region.label for region in result.regions if region.ruled_out]
            stage1 = Stage1Verdict(
                defective=len(ruled_out) < len(result.regions), ruled_out=ruled_out, probabilities=result.stage1
            )
        answer = SegmentResponse(
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
        return answer, decision

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
            inspection_log=self.log is not None,
        )


def review_out(inspection_id: int, review: Review) -> ReviewOut:
    return ReviewOut(
        inspection_id=inspection_id,
        label=review.label,
        accepted=review.accepted,
        reviewer=review.reviewer,
        created_at=review.created_at,
    )


def inspection_out(inspection: Inspection) -> InspectionOut:
    return InspectionOut(
        id=inspection.id,
        created_at=inspection.created_at,
        task=inspection.task,
        channel=inspection.channel,
        image_sha256=inspection.image_sha256,
        file_name=inspection.file_name,
        model_source=inspection.model_source,
        model_fingerprint=inspection.model_fingerprint,
        thresholds=inspection.thresholds,
        answer=inspection.answer,
        confidence=inspection.confidence,
        scores=inspection.scores,
        unknown=inspection.unknown,
        defective=inspection.defective,
        flags=list(inspection.flags),
        image_stored=inspection.image_stored,
        review=None if inspection.review is None else review_out(inspection.id, inspection.review),
    )


def image_info(data: bytes, image) -> ImageInfo:
    return ImageInfo(sha256=image_sha256(data), width=image.width, height=image.height)


async def read_upload(file: UploadFile, max_bytes: int) -> tuple[bytes, str]:
    """The upload's bytes, at most one over ``max_bytes`` (enough for the loader to refuse it), and its name."""
    return await file.read(max_bytes + 1), file.filename or "upload"


def create_api_router(
    registry: ClassifierRegistry,
    segmenter: LazySegmenter | None = None,
    limits: ApiLimits | None = None,
    api_key: str | None = None,
    inspection_log: InspectionLog | None = None,
) -> APIRouter:
    """The ``/api/v1`` routes over the models the app serves; with ``api_key``, all but health require it.

    Every classify and segment answer is recorded in ``inspection_log`` (None: nothing is recorded,
    and the inspection routes answer 503 ``log_disabled``).
    """
    limits = limits or ApiLimits()
    service = InspectionService(registry, segmenter or LazySegmenter(None), limits, inspection_log)
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
        summary="Classify one image (and log the decision)",
    )
    async def classify(file: ImageFile, model: ModelField = None, top_k: TopKField = None) -> ClassifyResponse:
        source = model or registry.default
        service.check_model(source)
        data, filename = await read_upload(file, limits.max_file_bytes)
        answer, decision = await service.in_worker(service.classify, data, filename, source, top_k)
        answer.inspection_id = await service.record(decision, data)
        return answer

    @router.post(
        "/segment",
        response_model=SegmentResponse,
        responses=_ERRORS,
        dependencies=guarded,
        summary="Outline the defects in one steel-strip image (and log the decision)",
    )
    async def segment(file: ImageFile) -> SegmentResponse:
        data, filename = await read_upload(file, limits.max_file_bytes)
        answer, decision = await service.in_worker(service.segment, data, filename)
        answer.inspection_id = await service.record(decision, data)
        return answer

    # Plain functions: FastAPI runs them in its thread pool, so a database read never blocks the event loop.
    @router.get(
        "/inspections",
        response_model=InspectionList,
        responses=_LOG_ERRORS,
        dependencies=guarded,
        summary="Logged decisions, newest first",
    )
    def list_inspections(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = DEFAULT_PAGE,
        offset: Annotated[int, Query(ge=0, description="Decisions to skip (newest first).")] = 0,
        flag: Annotated[Literal[FLAGS] | None, Query(description="Only decisions with this flag.")] = None,
        task: Annotated[Literal[TASKS] | None, Query(description="Only this task.")] = None,
        since: Annotated[datetime | None, Query(description="From this time on, ISO 8601 (no zone: UTC).")] = None,
        model: Annotated[str | None, Query(description="Only this model source, as logged.")] = None,
    ) -> InspectionList:
        found = service.inspections(limit=limit, offset=offset, flag=flag, task=task, since=since, model=model)
        return InspectionList(inspections=found, limit=limit, offset=offset)

    @router.get(
        "/inspections/{inspection_id}",
        response_model=InspectionOut,
        responses=_LOG_ERRORS,
        dependencies=guarded,
        summary="One logged decision with its latest review",
    )
    def get_inspection(inspection_id: InspectionId) -> InspectionOut:
        return service.inspection(inspection_id)

    @router.post(
        "/inspections/{inspection_id}/review",
        response_model=ReviewOut,
        responses=_LOG_ERRORS,
        dependencies=guarded,
        summary="Review a logged decision: accept its answer or set the right label",
    )
    def review_inspection(inspection_id: InspectionId, review: Annotated[ReviewIn, Body()]) -> ReviewOut:
        return service.review(inspection_id, review)

    return router
