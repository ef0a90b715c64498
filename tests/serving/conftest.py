"""Fixtures for serving tests: a tiny random model, an in-process backend and a real uvicorn server.

    .venv/bin/python -m pytest tests/serving -q
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

# The helper module sits next to this file; make it importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_tiny_model import API_KEY, build_tiny_model  # noqa: E402

# One thread: the CI box has 2 shared cores and oversubscribed OpenMP spin-waits are ~100x slower.
THREADS = 1


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-lam"))


def _backend(model_dir: str, prefill_thread: str, packed_prefill: str = "off", replicas: int = 1):
    from serving.embedded import EmbeddedBackend

    return EmbeddedBackend(model_dir, max_batch_size=32, num_threads=THREADS, max_new_tokens_limit=256,
                           prefill_thread=prefill_thread, packed_prefill=packed_prefill, replicas=replicas)


@pytest.fixture(scope="session")
def backend(tiny_model_dir):
    """Prefill overlapped with decode, as `lam serve` runs on a CPU with a core to spare."""
    b = _backend(tiny_model_dir, "on")
    yield b
    b.close()


@pytest.fixture(scope="session")
def sync_backend(tiny_model_dir):
    """Prefill between decode steps, in the one worker thread."""
    b = _backend(tiny_model_dir, "off")
    yield b
    b.close()


@pytest.fixture(scope="session")
def packed_backend(tiny_model_dir):
    """New prompts packed into the decode steps' forwards, in the one worker thread."""
    b = _backend(tiny_model_dir, "off", "auto")
    assert b.packed, "the tiny model must pass the packed-step check"
    yield b
    b.close()


@pytest.fixture(scope="session")
def replicated_backend(tiny_model_dir):
    """Two packed batches side by side, one worker thread each, sharing the queue and the prefix cache."""
    b = _backend(tiny_model_dir, "off", "auto", replicas=2)
    assert b.replicas == 2 and b.packed and len(b.workers) == 2 and b.max_batch_size == 16
    yield b
    b.close()


@pytest.fixture(params=["prefill-thread", "sync", "packed", "replicas"])
def any_backend(request):
    """Every worker mode: prefill in its own thread, between decode steps, packed into them, and two packed
    replicas."""
    return request.getfixturevalue({"prefill-thread": "backend", "sync": "sync_backend",
                                    "packed": "packed_backend", "replicas": "replicated_backend"}[request.param])


class ThreadedServer:
    """uvicorn running an app in a background thread of this process (so tests can inspect the backend)."""

    def __init__(self, app, host: str = "127.0.0.1"):
        import uvicorn

        with socket.socket() as s:
            s.bind((host, 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning"))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.root_url = f"http://{host}:{self.port}"
        self.base_url = self.root_url + "/v1"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def http_server(backend):
    """Real uvicorn server with auth on, serving the shared tiny backend as 'tiny-lam'."""
    from serving.openai_server import create_app

    with ThreadedServer(create_app(backend, "tiny-lam", api_key=API_KEY)) as srv:
        yield srv


@pytest.fixture()
def client(http_server):
    import openai

    return openai.OpenAI(base_url=http_server.base_url, api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(autouse=True, scope="session")
def _no_inherited_key():
    # A developer's LAM_API_KEY must not leak into subprocess servers started by the tests.
    old = os.environ.pop("LAM_API_KEY", None)
    yield
    if old is not None:
        os.environ["LAM_API_KEY"] = old
