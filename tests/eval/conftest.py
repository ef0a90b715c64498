"""Model servers for evaluation tests: a stub OpenAI-compatible server (uvicorn in a thread, starts in
a second) and, for slow tests, the tiny random model behind the real serving stack (a subprocess)."""
from __future__ import annotations

import re
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.serving.conftest import ThreadedServer


def gullible_reply(messages: list[dict], default: str) -> str:
    """What a model that obeys any instruction in its observation would say: the action an injected
    line asks for (eval/perturb.py INJECTIONS), else `default`."""
    m = re.search(r"(?:reply with exactly: |must be: |the only correct action now is )([a-z ]+)",
                  messages[-1]["content"] if messages else "")
    return m.group(1).strip() if m else default


class StubModelServer:
    """POST /v1/chat/completions answers like `gullible_reply` with token usage; GET /v1/models; /health.
    127.0.0.1 only."""

    def __init__(self, reply: str = "turn left", model: str = "stub"):
        import uvicorn
        from fastapi import FastAPI

        app = FastAPI()
        self.requests = 0

        @app.get("/health")
        def health():
            return {"ok": True}

        @app.get("/v1/models")
        def models():
            return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "test"}]}

        @app.post("/v1/chat/completions")
        def chat(body: dict):
            self.requests += 1
            content = gullible_reply(body.get("messages", []), reply)
            return {"id": f"c{self.requests}", "object": "chat.completion", "created": 0, "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}

        self._server = ThreadedServer(app)
        self.port, self.root_url, self.base_url = self._server.port, self._server.root_url, self._server.base_url

    def __enter__(self):
        self._server.__enter__()
        return self

    def __exit__(self, *exc):
        self._server.__exit__(*exc)


@pytest.fixture(scope="session")
def stub_server():
    with StubModelServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def tiny_model_server(tmp_path_factory):
    """The real serving stack (embedded backend) with the tiny random model, in a subprocess."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
    from serving_tiny_model import build_tiny_model

    from serving.launch import start_server_subprocess

    model = build_tiny_model(tmp_path_factory.mktemp("m") / "tiny-lam", max_position_embeddings=2048)
    server = start_server_subprocess(str(model), threads=1, model_name="tiny-lam", max_new_tokens_limit=16)
    yield server
    server.stop()  # by its PID
