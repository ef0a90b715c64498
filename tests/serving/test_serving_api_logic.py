"""Server logic against a scripted fake backend: tool calls, JSON mode, 429, backend failures, content parts.

    .venv/bin/python -m pytest tests/serving/test_serving_api_logic.py -q
"""
from __future__ import annotations

import json
from concurrent.futures import Future

import pytest
from fastapi.testclient import TestClient

from serving.chat_format import extract_json_object, parse_tool_calls
from serving.backend_api import Choice, GenerationResult, QueueFullError
from serving.openai_server import create_app

MSG = [{"role": "user", "content": "go north"}]
CALL = '<tool_call>{"name": "move", "arguments": {"direction": "north", "steps": 2}}</tool_call>'
TOOLS = [{"type": "function", "function": {"name": "move", "description": "Move the agent",
                                           "parameters": {"type": "object", "properties": {}}}}]


class _Handle:
    def __init__(self, fut):
        self.future = fut

    def cancel(self):
        self.future.cancel()


class FakeBackend:
    """Duck-typed stand-in for EmbeddedBackend that answers every request with `text` (or fails)."""

    max_context, max_new_tokens_limit, vocab_size, queue_depth, active_rows = 100, 50, 1000, 0, 0

    def __init__(self, text="ok", template="{{ tools }}", submit_error=None, run_error=None):
        self.text, self.chat_template = text, template
        self.submit_error, self.run_error = submit_error, run_error
        self.on_batch = None
        self.rendered = []

    def render_chat(self, messages, tools=None):
        if any(m["content"] == "BAD-TEMPLATE" for m in messages):
            import jinja2
            raise jinja2.TemplateError("Conversation roles must alternate")
        self.rendered.append((messages, tools))
        return "prompt"

    def encode(self, text):
        return [1, 2, 3]

    def decode(self, ids):
        return "prompt"

    def submit(self, ids, params, on_event=None, prompt_param="messages"):
        if self.submit_error:
            raise self.submit_error
        fut: Future = Future()
        if self.run_error:
            fut.set_exception(self.run_error)
            return _Handle(fut)
        for i in range(params.n):
            if on_event:
                on_event(i, self.text, "stop")
        choices = [Choice(i, self.text, [7], "stop") for i in range(params.n)]
        fut.set_result(GenerationResult(choices, len(ids), params.n))
        return _Handle(fut)


def _post(backend, body, path="/v1/chat/completions"):
    with TestClient(create_app(backend, "fake"), raise_server_exceptions=False) as c:
        return c.post(path, json={"model": "fake", **body})


def test_tool_call_is_parsed_into_openai_tool_calls():
    b = FakeBackend(text="Moving. " + CALL)
    r = _post(b, {"messages": MSG, "tools": TOOLS})
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "move" and call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"]) == {"direction": "north", "steps": 2}
    assert choice["message"]["content"] == "Moving."
    assert b.rendered[-1][1][0]["function"]["name"] == "move"  # template uses tools: passed through


# issue 16 item 2
def test_tools_request_to_a_template_without_tools_is_a_clear_400():
    b = FakeBackend(text=CALL, template="{% for m in messages %}{{ m.content }}{% endfor %}")
    r = _post(b, {"messages": MSG, "tools": TOOLS})
    assert r.status_code == 400 and r.json()["error"]["code"] == "tools_not_supported"
    assert "does not support tools" in r.json()["error"]["message"] and not b.rendered  # nothing was rendered
    # without tools (or with tool_choice none) the same model still answers
    assert _post(b, {"messages": MSG, "tools": TOOLS, "tool_choice": "none"}).status_code == 200


def test_tool_choice_none_keeps_raw_text():
    r = _post(FakeBackend(text=CALL), {"messages": MSG, "tools": TOOLS, "tool_choice": "none"})
    assert r.json()["choices"][0]["message"] == {"role": "assistant", "content": CALL}


def test_streamed_tool_call():
    with TestClient(create_app(FakeBackend(text=CALL), "fake")) as c:
        r = c.post("/v1/chat/completions", json={"model": "fake", "messages": MSG, "tools": TOOLS, "stream": True})
    events = [e[len("data: "):] for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    delta = chunks[0]["choices"][0]["delta"]
    assert delta["tool_calls"][0]["index"] == 0 and delta["tool_calls"][0]["function"]["name"] == "move"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_history_with_tool_calls_and_tool_results_renders():
    history = MSG + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "move", "arguments": '{"steps": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "moved"},
    ]
    b = FakeBackend()
    assert _post(b, {"messages": history, "tools": TOOLS}).status_code == 200
    rendered = b.rendered[-1][0]
    assert rendered[1]["tool_calls"][0]["function"]["arguments"] == {"steps": 1} and rendered[1]["content"] == ""


def test_json_mode_extracts_object():
    r = _post(FakeBackend(text='Sure: {"action": "left", "n": [1, 2]} hope that helps'),
              {"messages": MSG, "response_format": {"type": "json_object"}})
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"action": "left", "n": [1, 2]}


def test_queue_full_is_429_with_retry_after():
    r = _post(FakeBackend(submit_error=QueueFullError(retry_after=2.5)), {"messages": MSG})
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_backend_failure_is_a_clean_500_and_stream_error_event():
    r = _post(FakeBackend(run_error=RuntimeError("CUDA exploded at 0xdeadbeef")), {"messages": MSG})
    assert r.status_code == 500 and "deadbeef" not in r.text and r.json()["error"]["type"] == "server_error"
    s = _post(FakeBackend(run_error=RuntimeError("boom")), {"messages": MSG, "stream": True})
    assert '"error"' in s.text and s.text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize("messages,param", [
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages.0.content.0"),
    ([{"role": "user", "content": "BAD-TEMPLATE"}], "messages"),
])
def test_unrenderable_messages_are_400(messages, param):
    r = _post(FakeBackend(), {"messages": messages})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_text_content_parts_are_joined():
    b = FakeBackend()
    parts = [{"type": "text", "text": "go "}, {"type": "text", "text": "north"}]
    assert _post(b, {"messages": [{"role": "user", "content": parts}]}).status_code == 200
    assert b.rendered[-1][0][0]["content"] == "go north"


def test_completions_echo_and_token_prompts():
    r = _post(FakeBackend(text=" done"), {"prompt": [[1, 2], [3]], "echo": True, "n": 2}, "/v1/completions")
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["choices"][0]["text"] == "prompt done"


def test_parse_tool_calls_edge_cases():
    content, calls = parse_tool_calls('<tool_call>{"name": "a", "arguments": {}}</tool_call>'
                                      '<tool_call>{"name": "b", "arguments": "{\\"x\\": 1}"}</tool_call>')
    assert content is None and [c["function"]["name"] for c in calls] == ["a", "b"]
    assert calls[1]["function"]["arguments"] == '{"x": 1}'
    assert parse_tool_calls("<tool_call>{not json}</tool_call>") == ("<tool_call>{not json}</tool_call>", [])
    content, calls = parse_tool_calls('thinking <tool_call>{"name": "c", "arguments": {"k": 2}}')  # unclosed
    assert content == "thinking" and calls[0]["function"]["arguments"] == '{"k": 2}'
    assert extract_json_object("no json here") == "no json here"
