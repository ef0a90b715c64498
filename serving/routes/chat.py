"""POST /v1/chat/completions: messages rendered through the model's chat template, tools, JSON mode, streaming.

    curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}'

Free text streams token by token; tool calls and JSON mode need the whole text before parsing, so they stream
it in one piece.
"""
from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..api_errors import APIError
from ..chat_format import MessageError, extract_json_object, parse_tool_calls, to_template_messages, tools_for_template
from ..generation_io import (EventStream, finished, results, sse, stream_response, submit_all, token_counts,
                             usage)
from ..request_checks import check_auth, output_grammar, parse_body, sampling, supports_tools
from ..schemas import ChatCompletionRequest
from ..value_marks import expand_reply, marked_view

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    state = request.app.state
    backend, metrics, model_name = state.backend, state.metrics, state.model_name
    check_auth(request)
    if not state.chat:  # the server's limitation, not the request's: say so rather than fail to render
        raise APIError(400, f"this server's model {model_name!r} has no chat template (it was started with "
                            "--no-chat), so it serves /v1/completions only", code="chat_not_supported")
    started = time.monotonic()
    req: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest, model_name)
    max_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    params = sampling(req, req.max_completion_tokens or req.max_tokens)
    use_tools = bool(req.tools) and req.tool_choice != "none"
    want_json = req.response_format is not None and req.response_format.type != "text"
    params.grammar = output_grammar(req)
    try:
        messages = to_template_messages(req.messages)
    except MessageError as e:
        raise APIError(400, str(e), param=e.param)
    tools = tools_for_template(req.tools) if use_tools else None
    # a model trained on the marked view gets it here too, and its marks are expanded before the client sees them
    marks = None
    if tools and getattr(backend, "value_marks", False):  # tool conversations only, as in training
        messages, marks = marked_view(messages)
    if tools and not supports_tools(backend):
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
        return sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                    "choices": choices, **extra})

    def message(choice) -> tuple[dict, str]:
        content, calls = (parse_tool_calls(choice.text) if use_tools else (choice.text, []))
        if marks is not None:
            content, calls = expand_reply(content, calls, marks, tools)
        if want_json and content is not None:
            content = extract_json_object(content)
        msg = {"role": "assistant", "content": content}
        if calls:
            msg["tool_calls"] = calls
        return msg, ("tool_calls" if calls else choice.finish_reason)

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    if req.stream and not (use_tools or want_json):  # (marks only come with tools)
        es = EventStream()
        handles = submit_all(backend, [(prompt_ids, params, "messages")], max_param, es)

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
                yield sse(error)
                return
            metrics.observe_generation("/v1/chat/completions", started, **token_counts(res))
            if include_usage:
                yield chunk([], usage=usage(res))
        return stream_response(gen, handles)

    handles = submit_all(backend, [(prompt_ids, params, "messages")], max_param)
    res = await results(handles, max_param, request)
    metrics.observe_generation("/v1/chat/completions", started, **token_counts(res))
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
