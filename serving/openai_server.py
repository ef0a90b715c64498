"""OpenAI-compatible HTTP API (FastAPI) over a batching backend such as serving.embedded.EmbeddedBackend.

    python -m serving.server --model MODEL_DIR --port 8000
    # then: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...").chat.completions.create(...)

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models[/{id}], GET /health, GET /metrics
(serving/routes/), GET /openapi.json (serving/openapi_doc.py). This module builds the app around them: state,
metrics, error handlers. Requests are checked in serving/request_checks.py and reach the backend through
serving/generation_io.py; every client mistake is a 4xx in OpenAI's error shape (serving/api_errors.py).
"""
from __future__ import annotations

from fastapi import FastAPI

from .api_errors import install_error_handlers
from .metrics import RequestCounterMiddleware, ServingMetrics
from .routes import ROUTERS


def create_app(backend, model_name: str, api_key: str | None = None, chat: bool = True) -> FastAPI:
    """Build the FastAPI app; `api_key` (if set) is required as `Authorization: Bearer KEY` on /v1 routes.

    chat=False (`lam serve --no-chat`, a model without a chat template): /v1/chat/completions says so."""
    app = FastAPI(title="lam-stack serving", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.openapi = lambda: app.openapi_schema or _cache_openapi(app, model_name, backend)  # type: ignore[method-assign]
    metrics = ServingMetrics(backend)
    app.state.backend, app.state.metrics, app.state.model_name = backend, metrics, model_name
    app.state.api_key, app.state.chat = api_key, chat  # read by the routes' handlers
    app.add_middleware(RequestCounterMiddleware, metrics=metrics)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _cache_openapi(app, model_name: str, backend) -> dict:
    from .openapi_doc import build_openapi

    app.openapi_schema = build_openapi(app, model_name, getattr(backend, "max_new_tokens_limit", None),
                                       getattr(backend, "max_batch_size", None))
    return app.openapi_schema
