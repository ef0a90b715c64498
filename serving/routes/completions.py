"""POST /v1/completions: raw prompts (text or token ids, one or many), echo, streaming.

    curl -s http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \
        -d '{"model": "MODEL", "prompt": "Once", "max_tokens": 8}'
"""
from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..api_errors import APIError
from ..generation_io import (EventStream, finished, results, sse, stream_response, submit_all, token_counts,
                             usage)
from ..request_checks import check_auth, completion_prompts, parse_body, sampling
from ..schemas import CompletionRequest

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request):
    state = request.app.state
    backend, metrics, model_name = state.backend, state.metrics, state.model_name
    check_auth(request)
    started = time.monotonic()
    req: CompletionRequest = await parse_body(request, CompletionRequest, model_name)
    if req.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    params = sampling(req, req.max_tokens or min(16, backend.max_new_tokens_limit))  # OpenAI default: 16
    prompts = await asyncio.to_thread(completion_prompts, backend, req.prompt)
    items = [(ids, params, "prompt") for ids in prompts]
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(choices: list, **extra) -> str:
        return sse({"id": rid, "object": "text_completion", "created": created, "model": model_name,
                    "choices": choices, **extra})

    if req.stream:
        es = EventStream()
        handles = submit_all(backend, items, "max_tokens", es)

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
                yield sse(error)
                return
            metrics.observe_generation("/v1/completions", started, **token_counts(res))
            if req.stream_options and req.stream_options.include_usage:
                yield chunk([], usage=usage(res))
        return stream_response(gen, handles)

    res = await results(submit_all(backend, items, "max_tokens"), "max_tokens", request)
    metrics.observe_generation("/v1/completions", started, **token_counts(res))
    choices = []
    for k, r in enumerate(res):
        prefix = backend.decode(prompts[k]) if req.echo else ""
        choices += [{"index": k * params.n + c.index, "text": prefix + c.text, "finish_reason": c.finish_reason,
                     "logprobs": None} for c in r.choices]
    return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": model_name,
                         "choices": choices, "usage": usage(res)})
