"""POST /v1/weights: new weights into the running server (an RL phase's update), versioned in /v1/models.

    curl -s http://127.0.0.1:8000/v1/weights -H 'Authorization: Bearer KEY' -d '{"path": "EXPORT_DIR", "version": "rl-1"}'

The checks, the drain and the copy are serving/weight_update.py; a refused update (shape, dtype, a missing or
unknown tensor, an unreadable path) is a 400 naming what is wrong, and the previous weights keep serving.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ..api_errors import APIError
from ..request_checks import check_auth

router = APIRouter()


@router.post("/v1/weights")
async def update_weights(request: Request):
    check_auth(request)
    try:
        body = await request.json()
    except ValueError:
        raise APIError(400, "the body must be a JSON object like {\"path\": \"EXPORT_DIR\"}", code="invalid_json")
    if not isinstance(body, dict) or not isinstance(body.get("path"), str) or not body["path"]:
        raise APIError(400, "'path' (a model export directory on the server) is required", param="path",
                       code="missing_required_parameter")
    label = body.get("version")
    if label is not None and not isinstance(label, str):
        raise APIError(400, "'version' must be a string label", param="version", code="invalid_type")
    backend = request.app.state.backend
    if not hasattr(backend, "update_weights"):
        raise APIError(501, f"this backend ({type(backend).__name__}) cannot take new weights while serving; "
                       "restart it on the new model", type_="not_implemented_error", code="not_supported")
    from ..weight_update import WeightUpdateError

    try:
        card = await asyncio.to_thread(backend.update_weights, body["path"], label)
    except WeightUpdateError as e:
        raise APIError(400, str(e), param="path", code="invalid_weights")
    return {"object": "weights", "model": request.app.state.model_name, **card}
