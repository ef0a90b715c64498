"""A scripted OpenAI look-alike in a background thread (127.0.0.1): serves model "m" and answers
chat completions from a list of replies (text, tool calls, or an HTTP error), recording requests."""
import asyncio
import threading
import time

from serving.launch import find_free_port


class FakeOpenAI:
    """replies: each item is a str (content), a list of (name, arguments-json-string) tool calls, or
    an int HTTP status to fail with; the last item repeats. delay: seconds before each answer."""

    def __init__(self, replies: list, delay: float = 0.0):
        self.replies, self.delay, self.requests = list(replies), delay, []

    def _next(self):
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def __enter__(self) -> str:
        import uvicorn
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse

        app = FastAPI()
        app.get("/v1/models")(lambda: {"object": "list", "data": [{"id": "m", "object": "model"}]})

        async def complete(request: Request):
            body = await request.json()
            self.requests.append(body)
            if body.get("model") != "m":
                return JSONResponse({"error": {"message": f"model {body.get('model')!r} not found"}}, status_code=404)
            reply = self._next()
            await asyncio.sleep(self.delay)
            if isinstance(reply, int):
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=reply)
            message = {"role": "assistant", "content": reply if isinstance(reply, str) else None}
            if isinstance(reply, list):
                message["tool_calls"] = [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
                                         for i, (n, a) in enumerate(reply)]
            return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}

        app.post("/v1/chat/completions")(complete)
        self.port = find_free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
