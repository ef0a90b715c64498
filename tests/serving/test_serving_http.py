"""OpenAI-compatible server on a real uvicorn (tiny random model): official client, batching, errors, auth.

    .venv/bin/python -m pytest tests/serving/test_serving_http.py -q
"""
from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serving_tiny_model import API_KEY

MODEL = "tiny-lam"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MSG = [{"role": "user", "content": "hello agent"}]


def test_chat_completion(client):
    r = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant" and isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_matches_non_streaming(client, http_server):
    full = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens
    # Raw SSE framing: every event is `data: {...}` and the stream ends with `data: [DONE]`.
    body = {"model": MODEL, "messages": MSG, "max_tokens": 4, "stream": True}
    raw = httpx.post(http_server.base_url + "/chat/completions", json=body, headers=AUTH, timeout=30)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [e for e in raw.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[len("data: "):])["object"] == "chat.completion.chunk" for e in events[:-1])


def test_n_and_seed(client):
    kw = dict(model=MODEL, messages=MSG, max_tokens=12, temperature=1.0, seed=42, n=3)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_stop_string(client):
    full = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=30, temperature=0)
    text = full.choices[0].message.content
    stop = next(text[i:i + 2] for i in range(2, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    r = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == text[:text.find(stop)]


def test_completions_and_models(client):
    r = client.completions.create(model=MODEL, prompt=["The agent", "Observation:"], max_tokens=5, n=2,
                                  temperature=0)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy: both choices of a prompt agree
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_32_concurrent_requests_are_batched_and_match_sequential(client, http_server, backend):
    prompts = [[{"role": "user", "content": f"step {i} " + "left " * (i % 5)}] for i in range(32)]
    ask = lambda m: client.chat.completions.create(model=MODEL, messages=m, max_tokens=12,  # noqa: E731
                                                   temperature=0).choices[0].message.content
    sequential = [ask(m) for m in prompts]
    with ThreadPoolExecutor(32) as pool:
        concurrent = list(pool.map(ask, prompts))
    assert concurrent == sequential
    metrics = httpx.get(http_server.root_url + "/metrics").text
    count = float(re.search(r'^lam_batch_size_count\{phase="decode"\} (\S+)', metrics, re.M).group(1))
    ones = float(re.search(r'^lam_batch_size_bucket\{le="1.0",phase="decode"\} (\S+)', metrics, re.M).group(1))
    assert count > ones, "no decode step ran more than one sequence"
    assert backend.max_batch_seen > 1
    assert re.search(r"^lam_prefill_thread 1\.0$", metrics, re.M), "the fixture's backend prefills in its own thread"
    for name in ("lam_requests_total", "lam_prompt_tokens_total", "lam_completion_tokens_total",
                 "lam_queue_depth", "lam_request_latency_seconds_bucket"):
        assert name in metrics


TOO_LONG = "move left " * 400
BAD_REQUESTS = [  # (raw body or json, expected status, expected param)
    (b'{"model": "tiny-lam", "messages": [', 400, None),
    (b"[1, 2]", 400, None),
    ({"model": MODEL}, 400, "messages"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": "hi"}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ({"model": MODEL, "messages": MSG, "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": MODEL, "messages": MSG, "temperature": -1}, 400, "temperature"),
    ({"model": MODEL, "messages": MSG, "n": 0}, 400, "n"),
    ({"model": MODEL, "messages": MSG, "n": 1000}, 400, "n"),
    ({"model": MODEL, "messages": MSG, "stop": 7}, 400, "stop"),
    ({"model": "gpt-4", "messages": MSG}, 404, "model"),
    ({"messages": MSG}, 400, "model"),
    ({"model": MODEL, "messages": MSG, "max_tokens": 10**6}, 400, "max_tokens"),
    ({"model": MODEL, "messages": MSG, "max_completion_tokens": 10**6}, 400, "max_completion_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": TOO_LONG}]}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": TOO_LONG}], "stream": True}, 400, "messages"),
    ({"model": MODEL, "messages": MSG, "seed": 2**80, "max_tokens": 2}, 200, None),
]


@pytest.mark.parametrize("body,status,param", BAD_REQUESTS, ids=[str(i) for i in range(len(BAD_REQUESTS))])
def test_bad_chat_requests_are_4xx_with_param(http_server, body, status, param):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(http_server.base_url + "/chat/completions", headers=AUTH, timeout=30, **kw)
    assert r.status_code == status, r.text
    if status >= 400:
        err = r.json()["error"]
        assert err["param"] == param and err["message"] and err["type"]


@pytest.mark.parametrize("body,param", [
    ({"model": MODEL}, "prompt"),
    ({"model": MODEL, "prompt": ""}, "prompt"),
    ({"model": MODEL, "prompt": [10**9]}, "prompt"),
    ({"model": MODEL, "prompt": TOO_LONG}, "prompt"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 10**6}, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "logprobs": 3}, "logprobs"),
])
def test_bad_completion_requests(http_server, body, param):
    r = httpx.post(http_server.base_url + "/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_server_still_serves_after_bad_requests(client, http_server):
    for body in (b"\xff\xfe garbage", b"{" * 100000, b'{"model": 1}', b""):
        r = httpx.post(http_server.base_url + "/chat/completions", content=body, headers=AUTH, timeout=30)
        assert 400 <= r.status_code < 500
    assert httpx.get(http_server.root_url + "/nope").status_code == 404
    assert httpx.get(http_server.base_url + "/chat/completions", headers=AUTH).status_code == 405
    assert client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=3).choices


def test_auth(http_server):
    url = http_server.base_url
    assert httpx.get(http_server.root_url + "/health").status_code == 200  # always open
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = httpx.get(url + "/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.post(url + "/chat/completions", json={}, headers=headers).status_code == 401
    bad = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2)
    assert httpx.get(url + "/models", headers=AUTH).status_code == 200


def test_client_disconnect_frees_batch_rows(http_server, backend, monkeypatch):
    forward = backend._forward
    monkeypatch.setattr(backend, "_forward", lambda *a, **k: (time.sleep(0.02), forward(*a, **k))[1])  # ~5 s run
    body = {"model": MODEL, "messages": MSG, "max_tokens": 250, "temperature": 0}

    def wait_idle() -> bool:
        deadline = time.monotonic() + 3
        while backend.active_rows and time.monotonic() < deadline:
            time.sleep(0.01)
        return backend.active_rows == 0

    with httpx.stream("POST", http_server.base_url + "/chat/completions", json={**body, "stream": True},
                      headers=AUTH, timeout=30) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 3:
                break
    assert wait_idle(), "streaming request kept generating after the client left"
    with pytest.raises(httpx.TimeoutException):
        httpx.post(http_server.base_url + "/chat/completions", json=body, headers=AUTH, timeout=0.5)
    assert wait_idle(), "non-streaming request kept generating after the client left"
