"""Request validation of the OpenAI-compatible routes: auth, body parsing, sampling, output shape, prompts.

    python -m pytest tests/serving/test_serving_api_logic.py -q

Each check raises `APIError` (serving/api_errors.py) naming the field at fault, before anything reaches the
backend's queue.
"""
from __future__ import annotations

import hmac
import json

from fastapi import Request
from pydantic import ValidationError

from . import grammar
from .api_errors import APIError
from .backend_api import SamplingParams
from .schemas import (MAX_STOP_STRINGS, ChatCompletionRequest, FunctionCall, NamedToolChoice, _Sampling,
                      describe_validation_error)

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_PROMPTS = 128  # prompts in one /v1/completions request


def check_auth(request: Request) -> None:
    """The app's `api_key` (if set) is required as `Authorization: Bearer KEY`."""
    api_key = request.app.state.api_key
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "invalid or missing API key (use 'Authorization: Bearer KEY')",
                       code="invalid_api_key")


async def parse_body(request: Request, cls, model_name: str):
    """The JSON body as a `cls` request for this server's model (serving/schemas.py)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:  # chunked uploads declare no length
        raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise APIError(400, f"request body is not valid JSON: {str(e)[:200]}", code="invalid_json")
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    try:  # "\ud800" escapes are valid JSON but not encodable text; tokenizers would fail on them later
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "request contains invalid unicode (unpaired surrogate escapes)", code="invalid_json")
    try:
        req = cls.model_validate(data)
    except ValidationError as e:
        message, param = describe_validation_error(e)
        raise APIError(400, message, param=param, code="invalid_value")
    if req.model != model_name:
        raise APIError(404, f"model {req.model!r} does not exist; this server serves {model_name!r}",
                       param="model", code="model_not_found")
    if req.logprobs not in (None, False):
        raise APIError(400, "logprobs are not supported by this server", param="logprobs")
    return req


def sampling(req: _Sampling, max_tokens: int | None) -> SamplingParams:
    stops = req.stop_list()
    if len(stops) > MAX_STOP_STRINGS:
        raise APIError(400, f"at most {MAX_STOP_STRINGS} stop strings", param="stop")
    return SamplingParams(max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
                          top_p=1.0 if req.top_p is None else req.top_p, stop=stops, seed=req.seed, n=req.n or 1)


def supports_tools(backend) -> bool:
    """The backend's own answer (the embedded one renders a probe through its template), else whether
    the template source mentions tools at all."""
    known = getattr(backend, "supports_tools", None)
    return known if isinstance(known, bool) else "tools" in backend.chat_template


def output_grammar(req: ChatCompletionRequest):
    """The shape `tool_choice` / `response_format` promise (decoded under serving/grammar.py), or None; a
    promise this backend cannot keep is a 400 naming the field, never a reply that ignores it."""
    choice, tools = req.tool_choice, req.tools or []
    if choice == "required" or isinstance(choice, NamedToolChoice):
        names, wanted = [t.function.name for t in tools], None
        if isinstance(choice, NamedToolChoice):
            f = choice.function
            wanted = f.name if isinstance(f, FunctionCall) else f.get("name")
        if not names:
            raise APIError(400, "tool_choice asks for a tool call but the request has no tools", param="tool_choice")
        if choice != "required":
            if wanted not in names:
                raise APIError(400, f"tool_choice names function {wanted!r}, which is not among the request's "
                                    f"tools ({', '.join(names)})", param="tool_choice.function.name")
            names = [wanted]
        return grammar.tool_call(names)
    kind = req.response_format.type if req.response_format else "text"
    if kind == "json_schema":
        raise APIError(400, "response_format type 'json_schema' is not supported by this server's embedded backend; "
                            "use 'json_object', or serve the model with --backend vllm", param="response_format.type")
    if kind == "json_object":
        if tools and choice != "none":
            raise APIError(400, "response_format 'json_object' with tools and tool_choice 'auto' cannot both be "
                                "honoured by this server: pass tool_choice 'none' for a JSON reply, or 'required' "
                                "or a named function for a tool call", param="response_format")
        return grammar.JSON_OBJECT
    return None


def completion_prompts(backend, prompt) -> list[list[int]]:
    """Normalize str | list[str] | list[int] | list[list[int]] to token-id lists (runs in a thread)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    if len(prompt) > MAX_PROMPTS:
        raise APIError(400, f"at most {MAX_PROMPTS} prompts per request", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    out = []
    for p in prompt:
        ids = backend.encode(p) if isinstance(p, str) else list(p)
        vocab = getattr(backend, "vocab_size", None)
        if vocab is not None and any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        out.append(ids)
    return out
