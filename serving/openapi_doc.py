"""The OpenAPI document served at GET /openapi.json, with this server's real limits in it.

    curl -s http://127.0.0.1:8000/openapi.json | python -m json.tool | head

Handlers parse their JSON bodies themselves (to answer every mistake in OpenAI's error shape), so FastAPI
cannot see the request models; this module adds them from serving/schemas.py, narrowed to what this server
accepts (the one model name it serves, max_tokens and n limits). Schema-driven fuzzers such as schemathesis
then generate mostly servable requests, plus the invalid ones they derive from the same schema.
"""
from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from .schemas import ChatCompletionRequest, CompletionRequest

REF = "#/components/schemas/{model}"
BODIES = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def _set_maximum(schema: dict[str, Any], maximum: int) -> None:
    """Give the integer branch of a (possibly nullable) integer field an upper bound."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "integer":
            branch["maximum"] = maximum


def build_openapi(app, model_name: str, max_tokens: int | None, max_n: int | None) -> dict[str, Any]:
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                      description="OpenAI-compatible API of lam-stack (chat, completions, models).")
    _, defs = models_json_schema([(m, "validation") for m in BODIES.values()], ref_template=REF)
    schemas = defs.get("$defs", {})
    for model in BODIES.values():
        props = schemas[model.__name__]["properties"]
        props["model"] = {"type": "string", "enum": [model_name], "title": "Model"}
        for field in ("max_tokens", "max_completion_tokens"):
            if field in props and max_tokens:
                _set_maximum(props[field], max_tokens)
        if "n" in props and max_n:
            _set_maximum(props["n"], max_n)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(schemas)
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    components["schemas"]["Error"] = ERROR
    for path, model in BODIES.items():
        op = doc["paths"][path]["post"]
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}}
    for path, item in doc["paths"].items():
        for op in item.values():
            if path.startswith("/v1/"):
                op["security"] = [{"bearer": []}]
                op["responses"]["default"] = {"description": "Error (4xx for any client mistake)", "content": {
                    "application/json": {"schema": {"$ref": REF.format(model="Error")}}}}
            op["responses"].pop("422", None)  # FastAPI's validation error shape is never sent
    return doc
