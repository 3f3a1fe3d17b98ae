"""The REST API's errors: one JSON shape, ``{"error": {"code", "message"}}``, for every refusal.

Gradio's own routes keep their error formats: the conversion lives in the route class of the
API's router (FastAPI's "custom APIRoute" pattern), not in app-wide exception handlers.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Callable, Coroutine

from fastapi import HTTPException, Request, Response, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image, UnidentifiedImageError

from common.image_io import SUPPORTED_FORMATS, ImageLoadError

logger = logging.getLogger("vispect.api")

_MEBIBYTE = 1024 * 1024
# Multipart boundaries, part headers and the small form fields that come with the file: the body
# may exceed the file limit by this much, and the file itself is then held to the exact limit.
FORM_OVERHEAD_BYTES = 64 * 1024
# Pillow's ways of saying "cannot parse this header" (see common.image_io for where each comes from).
_FIELD_FIXES = {"top_k": "send a whole number from 1 to the model's number of classes"}
_HEADER_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError)


class ApiError(HTTPException):
    """A refusal with a status, a stable ``code`` and a message naming the problem and the fix.

    An ``HTTPException``, so FastAPI passes it through unchanged when it is raised while the body
    is read (see :func:`limited_body`).
    """

    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        body = {"error": {"code": self.code, "message": self.message}}
        return JSONResponse(body, status_code=self.status_code, headers=self.headers)


def upload_too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "file_too_large",
        f"The upload is over the server's {max_bytes / _MEBIBYTE:.1f} MB limit (app.py --max-file-mb); "
        "send a smaller image (resize it or save it as JPEG).",
    )


def image_error(error: ImageLoadError, data: bytes, filename: str, max_bytes: int, max_pixels: int) -> ApiError:
    """``common.image_io``'s refusal of an upload, with the status that fits the reason.

    The status comes from facts about the bytes (their size, what their header says), not from
    the wording of the message, which stays image_io's.
    """
    message = f"Cannot read image '{filename}': {error.reason}."
    if len(data) > max_bytes:
        return ApiError(413, "file_too_large", message)
    if not data:
        return ApiError(400, "empty_file", message)
    size = _header_size(data)
    if size is None:
        return ApiError(415, "not_an_image", message)
    if size[0] * size[1] > max_pixels:
        return ApiError(413, "too_many_pixels", message)
    return ApiError(400, "corrupt_image", message)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a supported image format, or None when Pillow cannot parse one."""
    try:
        with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as image:
            return image.size
    except Image.DecompressionBombError:
        # Refused by Pillow at open for being over twice its own pixel limit.
        return (Image.MAX_IMAGE_PIXELS or 0) * 2 + 1, 1
    except (*_HEADER_ERRORS, struct.error):
        return None


def validation_error(error: RequestValidationError, body: str = "Form field") -> ApiError:
    """FastAPI's 422 for the form fields, JSON body or query parameters, in our shape and naming the field.

    Args:
        error: FastAPI's error.
        body: What to call a field of the body: "Form field" (multipart routes) or "Field" (JSON).
    """
    problem = error.errors()[0]
    location = tuple(problem.get("loc") or ())
    if problem.get("type") == "json_invalid":
        return ApiError(422, "bad_json", f"The body is not valid JSON ({problem['msg']}); see /docs for its fields.")
    if location == ("body",):
        return ApiError(422, "missing_body", "The request needs a JSON body; see /docs for its fields.")
    field = str(location[-1]) if location else "request"
    if field == "file":
        return ApiError(
            422,
            "missing_file",
            "No image file in the request: send it as the multipart/form-data field 'file' "
            "(curl -F file=@photo.jpg ...).",
        )
    what = {"query": "Query parameter", "path": "Path parameter"}.get(location[0] if location else "", body)
    fix = _FIELD_FIXES.get(field, "see /docs for what each field takes")
    message = f"{what} '{field}': {problem['msg']} (got {problem.get('input')!r}); {fix}."
    return ApiError(422, f"bad_{field}", message)


def limited_body(request: Request, max_bytes: int) -> Request:
    """``request`` whose body is refused with 413 as soon as it passes ``max_bytes``.

    A declared Content-Length over the limit is refused before anything is read; a chunked body
    is counted as it arrives, and reading stops at the first chunk over the limit.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise upload_too_large(max_bytes - FORM_OVERHEAD_BYTES)
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise upload_too_large(max_bytes - FORM_OVERHEAD_BYTES)
        return message

    return Request(request.scope, receive)


def api_route_class(max_file_bytes: int) -> type[APIRoute]:
    """A route class whose requests carry at most ``max_file_bytes`` plus form overhead and whose errors are JSON."""
    max_body_bytes = max_file_bytes + FORM_OVERHEAD_BYTES

    class ApiRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[None, None, Response]]:
            handle = super().get_route_handler()
            form = self.body_field is not None and isinstance(self.body_field.field_info, params.Form)
            body = "Form field" if form else "Field"

            async def handle_with_errors(request: Request) -> Response:
                try:
                    return await handle(limited_body(request, max_body_bytes))
                except ApiError as error:
                    return error.response()
                except RequestValidationError as error:
                    return validation_error(error, body).response()
                except HTTPException as error:  # FastAPI's own, e.g. a body that is not valid multipart
                    return ApiError(error.status_code, "bad_request", f"{error.detail}.").response()
                except Exception as error:
                    logger.exception("unexpected error in %s %s", request.method, request.url.path)
                    return ApiError(
                        500, "internal_error", f"Internal error ({type(error).__name__}): the server log has details."
                    ).response()

            return handle_with_errors

    return ApiRoute
