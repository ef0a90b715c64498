"""How a generation route talks to the backend: submit all prompts or none, await the results or the client's
disconnect, and stream token events as server-sent events.

    python -m pytest tests/serving/test_serving_http.py -q -k "stream or disconnect"

Handlers never run the model: they `submit()` to the backend's worker thread and await its futures, so
concurrent requests share the worker's batches; a client that goes away frees its batch rows.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from .api_errors import APIError, backend_error
from .backend_api import BackendError


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class EventStream:
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


def submit_all(backend, items, max_param: str, stream: EventStream | None = None):
    """Submit (prompt_ids, params, prompt_param) items; all-or-nothing so a 429 leaves no orphans."""
    handles = []
    try:
        for k, (ids, params, prompt_param) in enumerate(items):
            cb = stream.callback(k * params.n) if stream else None
            handles.append(backend.submit(ids, params, cb, prompt_param))
    except BackendError as e:
        for h in handles:
            h.cancel()
        raise backend_error(e, max_param)
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
        raise backend_error(e, max_param)
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


def token_counts(res) -> dict:
    return {"prompt_tokens": sum(r.prompt_tokens for r in res),
            "completion_tokens": sum(r.completion_tokens for r in res)}


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
            err = backend_error(exc, "max_tokens") if isinstance(exc, BackendError) else \
                APIError(500, "generation failed", type_="server_error")
            return res, {"error": {"message": err.message, "type": err.type, "param": None, "code": err.code}}
        res.append(h.future.result())
    return res, None
