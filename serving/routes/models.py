"""GET /health, /metrics, /v1/models and /v1/models/{id}.

    curl -s http://127.0.0.1:8000/v1/models -H 'Authorization: Bearer KEY'
"""
from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..api_errors import APIError
from ..request_checks import check_auth

router = APIRouter()


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/metrics")
async def prometheus(request: Request):
    metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=metrics.content_type)


def model_card(state) -> dict:
    card = {"id": state.model_name, "object": "model", "created": int(time.time()), "owned_by": "lam-stack",
            "max_model_len": getattr(state.backend, "max_context", None)}
    if hasattr(state.backend, "weights_card"):  # which weights answer: bumped by POST /v1/weights
        card["weights"] = state.backend.weights_card()
    return card


@router.get("/v1/models")
async def list_models(request: Request):
    check_auth(request)
    return {"object": "list", "data": [model_card(request.app.state)]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    check_auth(request)
    if model_id != request.app.state.model_name:
        raise APIError(404, f"model {model_id!r} does not exist", param="model", code="model_not_found")
    return model_card(request.app.state)
