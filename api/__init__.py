"""A REST API beside Gradio's own, on the same server and port: ``/api/v1/{health,classify,segment}``.

``create_api_router`` builds the routes over the models the app serves; ``gradio_app_kwargs`` is
what ``demo.launch(app_kwargs=...)`` needs to serve them. ``launch`` builds a new FastAPI app
every time it runs (``gradio.routes.App.create_app``), so routes added to ``demo.app`` before
it are lost and routes added after it miss the requests of the first moments. A lifespan
passed in ``app_kwargs`` (Gradio runs it inside its own) adds them while uvicorn starts, before
it accepts a connection; none of Gradio's routes matches ``/api/v1/...``. ``share=True``,
``prevent_thread_lock`` and everything else about ``launch`` stay as they are.

>>> demo.launch(app_kwargs=gradio_app_kwargs(create_api_router(registry)))  # doctest: +SKIP
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi

from api.routes import API_KEY_HEADER, PREFIX, ApiLimits, create_api_router, versions

__all__ = ["API_KEY_ENV", "API_KEY_HEADER", "PREFIX", "ApiLimits", "create_api_router", "gradio_app_kwargs"]

API_KEY_ENV = "VISPECT_API_KEY"
TITLE = "Visual inspection toolkit REST API"
DESCRIPTION = (
    "Classify images and outline steel defects over HTTP. Errors are JSON: "
    '`{"error": {"code": ..., "message": ...}}`. Gradio\'s own API (what `gradio_client` calls) is '
    "described at /gradio_api/info."
)


def rest_openapi(app: FastAPI, router: APIRouter) -> dict:
    """The OpenAPI schema of the REST routes alone (Gradio's internal routes would bury them), built once."""
    if app.openapi_schema is None:
        app.openapi_schema = get_openapi(
            title=TITLE, version=versions()["app"] or "unknown", description=DESCRIPTION, routes=router.routes
        )
    return app.openapi_schema


def gradio_app_kwargs(router: APIRouter) -> dict:
    """``app_kwargs`` for ``demo.launch`` that serve ``router`` and its docs (``/docs``, ``/openapi.json``)."""

    @asynccontextmanager
    async def serve_rest_api(app: FastAPI):
        app.include_router(router)
        # FastAPI's documented way to replace the schema that /openapi.json and /docs serve.
        app.openapi = lambda: rest_openapi(app, router)
        yield

    return {"docs_url": "/docs", "lifespan": serve_rest_api}
