"""New weights into a running server (issue 17: an RL phase pushes its update without a restart).

    .venv/bin/python -m pytest tests/serving/test_weight_update.py -q
"""
from __future__ import annotations

import threading

import httpx
import pytest
from conftest import ThreadedServer, _backend
from serving_tiny_model import API_KEY, build_tiny_model

from serving.backend_api import SamplingParams

PROMPT = "The agent moves left, then"


def _greedy(backend, n: int = 12) -> list[int]:
    ids = backend.encode(PROMPT)
    return backend.generate_sync(ids, SamplingParams(max_tokens=n, temperature=0.0)).choices[0].token_ids


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    a = build_tiny_model(root / "a", seed=0)
    b = build_tiny_model(root / "b", seed=1)
    wide = root / "wide"  # same names, another shape: 3 layers would add names; a wider MLP changes shapes
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    base = AutoModelForCausalLM.from_pretrained(a)
    cfg = base.config
    cfg.intermediate_size = 96
    torch.manual_seed(2)
    LlamaForCausalLM(cfg).save_pretrained(wide)
    half = root / "half"
    AutoModelForCausalLM.from_pretrained(b).to(torch.float16).save_pretrained(half)
    return {"a": str(a), "b": str(b), "wide": str(wide), "half": str(half), "root": root}


def test_an_update_serves_the_new_weights_and_a_bad_one_changes_nothing(models):
    from serving.openai_server import create_app

    reference_b = _backend(models["b"], "off")
    want_b = _greedy(reference_b)
    reference_b.close()
    backend = _backend(models["a"], "on")
    try:
        want_a = _greedy(backend)
        assert want_a != want_b, "two seeds must answer differently for the test to mean anything"
        with ThreadedServer(create_app(backend, "tiny", api_key=API_KEY)) as srv:
            h = {"Authorization": f"Bearer {API_KEY}"}
            post = lambda body: httpx.post(srv.base_url + "/weights", json=body, headers=h, timeout=60)  # noqa: E731
            card = httpx.get(srv.base_url + "/models/tiny", headers=h).json()
            assert card["weights"]["version"] == 0

            r = post({"path": models["b"], "version": "rl-1"})
            assert r.status_code == 200, r.text
            assert r.json()["version"] == 1 and r.json()["label"] == "rl-1"
            assert _greedy(backend) == want_b  # exactly what a server started on B answers
            assert httpx.get(srv.base_url + "/models", headers=h).json()["data"][0]["weights"]["label"] == "rl-1"

            for body, words in [({"path": models["wide"]}, "shape"), ({"path": models["half"]}, "float16"),
                                ({"path": str(models["root"] / "nowhere")}, "neither"), ({}, "path")]:
                r = post(body)
                assert r.status_code == 400, r.text
                assert words in r.json()["error"]["message"]
                assert _greedy(backend) == want_b  # the previous weights keep serving
            assert httpx.post(srv.base_url + "/weights", json={"path": models["a"]}).status_code == 401
            assert httpx.get(srv.base_url + "/models/tiny", headers=h).json()["weights"]["version"] == 1
    finally:
        backend.close()


def test_requests_in_flight_finish_on_the_weights_they_started_with(models):
    """The update waits for the running batch; the long request is answered whole by the old weights."""
    backend = _backend(models["a"], "off")
    try:
        long_a = _greedy(backend, n=60)
        started, done = threading.Event(), threading.Event()
        handle = backend.submit(backend.encode(PROMPT), SamplingParams(max_tokens=60, temperature=0.0),
                                on_event=lambda *_: started.set())
        assert started.wait(30)  # in the running batch: its first token is out
        threading.Thread(target=lambda: (backend.update_weights(models["b"]), done.set()), daemon=True).start()
        assert handle.future.result(timeout=60).choices[0].token_ids == long_a
        assert done.wait(60) and backend.weights_version == 1
    finally:
        backend.close()
