"""tool_choice and response_format are kept, on the tiny random model: its output is forced into shape.

    .venv/bin/python -m pytest tests/serving/test_serving_constrained.py -q

A random model never writes JSON or a tool call by itself, so any well-formed output here comes from the
constrained decoding (serving/grammar.py), not from luck.
"""
from __future__ import annotations

import json

import httpx
import pytest
from serving_tiny_model import API_KEY

from serving.grammar import JSON_OBJECT, tool_call

MSG = [{"role": "user", "content": "go to the red ball"}]
TOOLS = [{"type": "function", "function": {"name": n, "description": d, "parameters": {"type": "object"}}}
         for n, d in (("move", "Move the agent"), ("pick_up", "Pick up an object"))]


@pytest.fixture(scope="module")
def tool_client(tmp_path_factory):
    """The tiny model with room for the tools' system prompt (about 300 tokens in its small vocabulary)."""
    import openai
    from tests.serving.conftest import ThreadedServer
    from serving_tiny_model import build_tiny_model

    from serving.embedded import EmbeddedBackend
    from serving.openai_server import create_app

    model = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-lam", max_position_embeddings=1024)
    b = EmbeddedBackend(str(model), max_batch_size=4, num_threads=1, prefill_thread="off", replicas=1)
    try:
        with ThreadedServer(create_app(b, "tiny-lam")) as srv:
            yield openai.OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=60)
    finally:
        b.close()


def _follows(g, text: str) -> bool:
    for ch in text:
        g = g.step(ch)
        if g is None:
            return False
    return g.complete


# issue 21 item 11
@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 3, "n": 3}])
def test_json_object_mode_returns_json_objects(client, sampling):
    r = client.chat.completions.create(model="tiny-lam", messages=MSG, max_tokens=40,
                                       response_format={"type": "json_object"}, **sampling)
    for choice in r.choices:
        assert isinstance(json.loads(choice.message.content), dict), choice.message.content
        assert _follows(JSON_OBJECT, choice.message.content)


# issue 21 item 11
def test_json_object_is_closed_even_when_max_tokens_is_short(client):
    r = client.chat.completions.create(model="tiny-lam", messages=MSG, max_tokens=6, temperature=1.0, seed=0,
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


# issue 21 item 11
@pytest.mark.parametrize("stream", [False, True])
def test_named_tool_choice_calls_that_tool(tool_client, stream):
    client = tool_client
    kwargs = dict(model="tiny-lam", messages=MSG, tools=TOOLS, max_tokens=60, temperature=0,
                  tool_choice={"type": "function", "function": {"name": "pick_up"}})
    if stream:
        name, args, finish = "", "", None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for c in chunk.choices:
                for tc in c.delta.tool_calls or []:
                    name += tc.function.name or ""
                    args += tc.function.arguments or ""
                finish = c.finish_reason or finish
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        assert len(choice.message.tool_calls) == 1
        fn, finish = choice.message.tool_calls[0].function, choice.finish_reason
        name, args = fn.name, fn.arguments
    assert name == "pick_up" and isinstance(json.loads(args), dict) and finish == "tool_calls"


# issue 21 item 11
def test_required_tool_choice_calls_one_of_the_tools(tool_client, backend):
    client = tool_client
    r = client.chat.completions.create(model="tiny-lam", messages=MSG, tools=TOOLS, max_tokens=60,
                                       temperature=1.0, seed=5, n=2, tool_choice="required")
    for choice in r.choices:
        call = choice.message.tool_calls[0]
        assert call.function.name in ("move", "pick_up") and isinstance(json.loads(call.function.arguments), dict)
        assert choice.finish_reason == "tool_calls"
    # The raw text the model was made to write is one Hermes call, as a trained model writes it.
    from serving_tiny_model import chat_prompt
    from serving.backend_api import SamplingParams

    out = backend.generate_sync(chat_prompt(backend, "hi"), SamplingParams(temperature=0, max_tokens=60,
                                                                           grammar=tool_call(["move", "pick_up"])))
    assert _follows(tool_call(["move", "pick_up"]), out.choices[0].text), out.choices[0].text


# issue 21 item 11
@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format.type"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "fly"}}}, "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
])
def test_promises_the_server_cannot_keep_are_400_naming_the_field(http_server, body, param):
    r = httpx.post(http_server.base_url + "/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": "tiny-lam", "messages": MSG, **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


# issue 21 item 11
def test_every_prefix_of_valid_json_closes_into_valid_json_and_invalid_text_is_refused():
    doc = '{"a": [1, -2.5e+3, true, null, {"b": "x\\u00e9\\n"}], "c": {}, "d": [], "e": 0.5E-2}'
    state = JSON_OBJECT
    for k, ch in enumerate(doc):
        assert isinstance(json.loads(doc[:k] + state.closing()), dict), doc[:k]
        state = state.step(ch)
        assert state is not None, doc[:k + 1]
    assert state.complete and state.step(" ") is None
    for bad in ('[1]', '{"a":01}', '{"a",}', '{"a":1,}', '{}x', '{"a":tru}', '{"a":"\x01"}', '{"a":1.}'):
        assert not _follows(JSON_OBJECT, bad), bad
