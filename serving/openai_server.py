"""OpenAI-compatible HTTP API (FastAPI) over a batching backend such as serving.embedded.EmbeddedBackend.

    python -m serving.server --model MODEL_DIR --port 8000
    # then: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...").chat.completions.create(...)

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models[/{id}], GET /health, GET /metrics,
GET /openapi.json (serving/openapi_doc.py).
Handlers never run the model: they tokenize in a thread, `submit()` to the backend's worker thread and
await its future, so concurrent requests share the worker's batches. Every client mistake is a 4xx in
OpenAI's error shape {"error": {"message", "type", "param", "code"}}.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .chat_format import (MessageError, extract_json_object, parse_tool_calls,
                          to_template_messages, tools_for_template)
from .backend_api import (BackendClosedError, BackendError, PromptValidationError, QueueFullError,
                          SamplingParams)
from .metrics import RequestCounterMiddleware, ServingMetrics
from . import grammar
from .schemas import (MAX_STOP_STRINGS, ChatCompletionRequest, CompletionRequest, FunctionCall, NamedToolChoice,
                      _Sampling, describe_validation_error)

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_PROMPTS = 128  # prompts in one /v1/completions request


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def _error_json(status: int, message: str, type_: str, param=None, code=None, headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _backend_error(exc: BackendError, max_param: str) -> APIError:
    if isinstance(exc, PromptValidationError):
        param = max_param if exc.param == "max_tokens" else exc.param
        return APIError(400, exc.message, param=param, code="invalid_value")
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), type_="rate_limit_error", code="rate_limit_exceeded",
                        headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
    if isinstance(exc, BackendClosedError):
        return APIError(503, str(exc), type_="server_error", code="shutting_down")
    return APIError(500, "generation failed", type_="server_error")


class _EventStream:
    """Bridges worker-thread token events into the event loop for SSE responses."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.open = 0

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # loop already closed (server shutting down)
            pass

    def callback(self, offset: int):
        return lambda i, delta, finish: self._put((offset + i, delta, finish))

    def watch(self, handle) -> None:
        self.open += 1
        handle.future.add_done_callback(lambda _f: self._put(None))

    async def events(self):
        while self.open:
            item = await self.queue.get()
            if item is None:
                self.open -= 1
            else:
                yield item


def create_app(backend, model_name: str, api_key: str | None = None, chat: bool = True) -> FastAPI:
    """Build the FastAPI app; `api_key` (if set) is required as `Authorization: Bearer KEY` on /v1 routes.

    chat=False (`lam serve --no-chat`, a model without a chat template): /v1/chat/completions says so."""
    app = FastAPI(title="lam-stack serving", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.openapi = lambda: app.openapi_schema or _cache_openapi(app, model_name, backend)  # type: ignore[method-assign]
    metrics = ServingMetrics(backend)
    app.state.backend, app.state.metrics, app.state.model_name = backend, metrics, model_name
    app.add_middleware(RequestCounterMiddleware, metrics=metrics)

    @app.exception_handler(APIError)
    async def _api_error(_req, exc: APIError):
        return _error_json(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error_json(exc.status_code, str(exc.detail), "invalid_request_error", None, code)

    @app.exception_handler(Exception)
    async def _unexpected(_req, _exc: Exception):
        return _error_json(500, "internal server error", "server_error")

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key (use 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    async def parse_body(request: Request, cls):
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

    def submit_all(items, max_param: str, stream: _EventStream | None = None):
        """Submit (prompt_ids, params, prompt_param) items; all-or-nothing so a 429 leaves no orphans."""
        handles = []
        try:
            for k, (ids, params, prompt_param) in enumerate(items):
                cb = stream.callback(k * params.n) if stream else None
                handles.append(backend.submit(ids, params, cb, prompt_param))
        except BackendError as e:
            for h in handles:
                h.cancel()
            raise _backend_error(e, max_param)
        if stream:
            for h in handles:
                stream.watch(h)
        return handles

    async def disconnected(request: Request) -> None:
        """Returns when the client goes away (the body was read: the next ASGI message is the disconnect)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def results(handles, max_param: str, request: Request):
        waiter = asyncio.gather(*(asyncio.wrap_future(h.future) for h in handles))
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())  # mark retrieved: no log noise
        # uvicorn does not cancel a handler whose client left: listen for it (as Starlette's streaming
        # responses do) rather than poll, and free the batch rows.
        listener = asyncio.ensure_future(disconnected(request))
        try:
            done, _ = await asyncio.wait({waiter, listener}, return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                return waiter.result()
            raise APIError(499, "client disconnected", code="client_disconnected")
        except BackendError as e:
            raise _backend_error(e, max_param)
        finally:
            listener.cancel()
            for h in handles:
                if not h.future.done():
                    h.cancel()
            if not waiter.done():
                waiter.cancel()

    def usage(res) -> dict:
        p, c = sum(r.prompt_tokens for r in res), sum(r.completion_tokens for r in res)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def stream_response(gen_fn, handles) -> StreamingResponse:
        async def body():
            try:
                async for chunk in gen_fn():
                    yield chunk
                yield "data: [DONE]\n\n"
            finally:  # also runs when the client disconnects mid-stream
                for h in handles:
                    if not h.future.done():
                        h.cancel()
        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def finished(handles) -> tuple[list, dict | None]:
        """Results of finished handles, or an error payload to send as the last SSE event."""
        res = []
        for h in handles:
            exc = None if h.future.cancelled() else h.future.exception()
            if h.future.cancelled() or exc is not None:
                err = _backend_error(exc, "max_tokens") if isinstance(exc, BackendError) else \
                    APIError(500, "generation failed", type_="server_error")
                return res, {"error": {"message": err.message, "type": err.type, "param": None, "code": err.code}}
            res.append(h.future.result())
        return res, None

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": int(time.time()), "owned_by": "lam-stack",
                "max_model_len": getattr(backend, "max_context", None)}

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_auth(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request):
        check_auth(request)
        if model_id != model_name:
            raise APIError(404, f"model {model_id!r} does not exist", param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_auth(request)
        if not chat:  # the server's limitation, not the request's: say so rather than fail to render
            raise APIError(400, f"this server's model {model_name!r} has no chat template (it was started with "
                                "--no-chat), so it serves /v1/completions only", code="chat_not_supported")
        started = time.monotonic()
        req: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest)
        max_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        params = sampling(req, req.max_completion_tokens or req.max_tokens)
        use_tools = bool(req.tools) and req.tool_choice != "none"
        want_json = req.response_format is not None and req.response_format.type != "text"
        params.grammar = _output_grammar(req)
        try:
            messages = to_template_messages(req.messages)
        except MessageError as e:
            raise APIError(400, str(e), param=e.param)
        tools = tools_for_template(req.tools) if use_tools else None
        if tools and not _supports_tools(backend):
            # no system-prompt stand-in: the model is served tools only as its template renders them
            # (as it was trained, training/samples.py), never in a form it has not seen
            raise APIError(400, f"this model's chat template does not support tools, so {model_name!r} cannot be "
                                "served a tools request; send it without tools (or tool_choice 'none'), or serve a "
                                "model whose template renders tools", param="tools", code="tools_not_supported")

        def render() -> list[int]:
            try:
                return backend.encode(backend.render_chat(messages, tools=tools))
            except Exception as e:  # jinja errors (e.g. raise_exception on bad role order) are the client's
                raise APIError(400, f"messages cannot be rendered with the chat template: {e}", param="messages")

        prompt_ids = await asyncio.to_thread(render)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choices: list, **extra) -> str:
            return _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                         "choices": choices, **extra})

        def message(choice) -> tuple[dict, str]:
            content, calls = (parse_tool_calls(choice.text) if use_tools else (choice.text, []))
            if want_json and content is not None:
                content = extract_json_object(content)
            msg = {"role": "assistant", "content": content}
            if calls:
                msg["tool_calls"] = calls
            return msg, ("tool_calls" if calls else choice.finish_reason)

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if req.stream and not (use_tools or want_json):
            es = _EventStream()
            handles = submit_all([(prompt_ids, params, "messages")], max_param, es)

            async def gen():
                for i in range(params.n):
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                  "finish_reason": None, "logprobs": None}])
                async for i, delta, finish in es.events():
                    if delta:
                        yield chunk([{"index": i, "delta": {"content": delta}, "finish_reason": None,
                                      "logprobs": None}])
                    if finish:
                        yield chunk([{"index": i, "delta": {}, "finish_reason": finish, "logprobs": None}])
                res, error = finished(handles)
                if error:
                    yield _sse(error)
                    return
                metrics.observe_generation("/v1/chat/completions", started, **_token_counts(res))
                if include_usage:
                    yield chunk([], usage=usage(res))
            return stream_response(gen, handles)

        handles = submit_all([(prompt_ids, params, "messages")], max_param)
        res = await results(handles, max_param, request)
        metrics.observe_generation("/v1/chat/completions", started, **_token_counts(res))
        built = [(c.index, *message(c)) for c in res[0].choices]
        if req.stream:  # tools / JSON mode need the whole text before parsing: stream it in one piece
            async def gen_buffered():
                for i, msg, reason in built:
                    delta = {"role": "assistant", "content": msg["content"]}
                    if "tool_calls" in msg:
                        delta["tool_calls"] = [{"index": k, **tc} for k, tc in enumerate(msg["tool_calls"])]
                    yield chunk([{"index": i, "delta": delta, "finish_reason": None, "logprobs": None}])
                    yield chunk([{"index": i, "delta": {}, "finish_reason": reason, "logprobs": None}])
                if include_usage:
                    yield chunk([], usage=usage(res))
            return stream_response(gen_buffered, [])
        # A Response, not a dict: FastAPI would walk a returned dict with jsonable_encoder first (hot path).
        return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": model_name,
                             "choices": [{"index": i, "message": msg, "finish_reason": reason, "logprobs": None}
                                         for i, msg, reason in built],
                             "usage": usage(res)})

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_auth(request)
        started = time.monotonic()
        req: CompletionRequest = await parse_body(request, CompletionRequest)
        if req.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        params = sampling(req, req.max_tokens or min(16, backend.max_new_tokens_limit))  # OpenAI default: 16
        prompts = await asyncio.to_thread(_completion_prompts, backend, req.prompt)
        items = [(ids, params, "prompt") for ids in prompts]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choices: list, **extra) -> str:
            return _sse({"id": rid, "object": "text_completion", "created": created, "model": model_name,
                         "choices": choices, **extra})

        if req.stream:
            es = _EventStream()
            handles = submit_all(items, "max_tokens", es)

            async def gen():
                echoed = set()
                async for i, delta, finish in es.events():
                    if req.echo and i not in echoed:
                        echoed.add(i)
                        delta = backend.decode(prompts[i // params.n]) + delta
                    if delta or finish:
                        yield chunk([{"index": i, "text": delta, "finish_reason": finish, "logprobs": None}])
                res, error = finished(handles)
                if error:
                    yield _sse(error)
                    return
                metrics.observe_generation("/v1/completions", started, **_token_counts(res))
                if req.stream_options and req.stream_options.include_usage:
                    yield chunk([], usage=usage(res))
            return stream_response(gen, handles)

        res = await results(submit_all(items, "max_tokens"), "max_tokens", request)
        metrics.observe_generation("/v1/completions", started, **_token_counts(res))
        choices = []
        for k, r in enumerate(res):
            prefix = backend.decode(prompts[k]) if req.echo else ""
            choices += [{"index": k * params.n + c.index, "text": prefix + c.text, "finish_reason": c.finish_reason,
                         "logprobs": None} for c in r.choices]
        return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": model_name,
                             "choices": choices, "usage": usage(res)})

    return app


def _supports_tools(backend) -> bool:
    """The backend's own answer (the embedded one renders a probe through its template), else whether
    the template source mentions tools at all."""
    known = getattr(backend, "supports_tools", None)
    return known if isinstance(known, bool) else "tools" in backend.chat_template


def _output_grammar(req: ChatCompletionRequest):
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


def _cache_openapi(app, model_name: str, backend) -> dict:
    from .openapi_doc import build_openapi

    app.openapi_schema = build_openapi(app, model_name, getattr(backend, "max_new_tokens_limit", None),
                                       getattr(backend, "max_batch_size", None))
    return app.openapi_schema


def _token_counts(res) -> dict:
    return {"prompt_tokens": sum(r.prompt_tokens for r in res),
            "completion_tokens": sum(r.completion_tokens for r in res)}


def _completion_prompts(backend, prompt) -> list[list[int]]:
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
