"""Schema-driven fuzzing (schemathesis) of the real server through its own /openapi.json: never a 5xx.

    .venv/bin/python -m pytest tests/serving/test_serving_fuzz.py -q

FUZZ_EXAMPLES generated requests over all operations (valid ones from the schema and invalid ones derived
from it) are sent over HTTP to a uvicorn server running the tiny random model with small limits, so a
generation costs milliseconds. Any 5xx, any non-JSON error body and any error without OpenAI's error
shape fails the test; after the run the server must still answer a normal request.
"""
from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from conftest import THREADS, ThreadedServer
from hypothesis import HealthCheck, settings
from serving_tiny_model import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
FUZZ_EXAMPLES = int(os.environ.get("LAM_FUZZ_EXAMPLES", "150"))  # requests, over all operations


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir):
    from serving.embedded import EmbeddedBackend
    from serving.openai_server import create_app

    backend = EmbeddedBackend(tiny_model_dir, max_batch_size=4, max_queue=64, num_threads=THREADS,
                              max_new_tokens_limit=8)
    try:
        with ThreadedServer(create_app(backend, "tiny-lam", api_key=API_KEY)) as srv:
            yield srv
    finally:
        backend.close()


def test_no_request_causes_a_server_error(fuzz_server):
    # Strategies are built inside the test (the schema needs the running server); schemathesis's lazy
    # pytest fixture loader does not support pytest 9 yet.
    from hypothesis import given
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(fuzz_server.root_url + "/openapi.json")
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    seen = {}

    @given(case=cases)
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(headers=AUTH, timeout=30)
        key = f"{case.method} {case.operation.path} {response.status_code}"
        seen[key] = seen.get(key, 0) + 1
        assert response.status_code < 500, (response.status_code, response.text[:500], case.as_curl_command())
        if response.status_code >= 400:
            error = response.json()["error"]  # OpenAI's error shape, whatever went wrong
            assert isinstance(error["message"], str) and error["type"], response.text[:500]

    check()
    print("fuzzed:", dict(sorted(seen.items())))
    assert sum(n for k, n in seen.items() if k.startswith("POST") and k.endswith(" 200")) > 0, seen


def test_server_still_serves_after_fuzzing(fuzz_server):
    body = {"model": "tiny-lam", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = httpx.post(fuzz_server.base_url + "/chat/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    spec = httpx.get(fuzz_server.root_url + "/openapi.json").json()  # open like /health, limits included
    chat = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["model"]["enum"] == ["tiny-lam"] and chat["max_tokens"]["anyOf"][0]["maximum"] == 8
