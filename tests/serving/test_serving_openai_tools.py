"""The unmodified `openai` client through a tool-call round trip, plain and streamed, on a real uvicorn server.

    .venv/bin/python -m pytest tests/serving/test_serving_openai_tools.py -q

The backend is scripted (a random model never emits a tool call): it answers with a Hermes tool call first,
then with text, and records the messages the chat template received, so the test sees both what the client
gets and what the model would see on the second turn.
"""
from __future__ import annotations

import json

import openai
import pytest
from conftest import ThreadedServer
from test_serving_api_logic import CALL, TOOLS, FakeBackend

from serving.openai_server import create_app

QUESTION = [{"role": "user", "content": "go north twice"}]


class ScriptedBackend(FakeBackend):
    def __init__(self, replies: list[str]):
        super().__init__(text=replies[0])
        self.replies = list(replies)

    def submit(self, ids, params, on_event=None, prompt_param="messages"):
        self.text = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return super().submit(ids, params, on_event, prompt_param)


@pytest.fixture()
def tool_client():
    backend = ScriptedBackend([CALL, "Done: moved north twice."])
    with ThreadedServer(create_app(backend, "fake", api_key="k")) as srv:
        yield openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0, timeout=30), backend


def test_tool_call_round_trip(tool_client):
    client, backend = tool_client
    first = client.chat.completions.create(model="fake", messages=QUESTION, tools=TOOLS, tool_choice="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "move"
    assert json.loads(call.function.arguments) == {"direction": "north", "steps": 2}

    # The canonical client loop: append the assistant message object itself, then the tool's result.
    messages = QUESTION + [choice.message, {"role": "tool", "tool_call_id": call.id, "content": "moved 2 north"}]
    second = client.chat.completions.create(model="fake", messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Done: moved north twice." and not second.choices[0].message.tool_calls
    rendered, tools = backend.rendered[-1]
    assert tools[0]["function"]["name"] == "move"
    assistant, tool = rendered[1], rendered[2]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["id"] == call.id
    assert assistant["tool_calls"][0]["function"]["arguments"] == {"direction": "north", "steps": 2}
    assert tool == {"role": "tool", "content": "moved 2 north", "tool_call_id": call.id}


def test_streamed_tool_call_with_the_official_client(tool_client):
    client, _ = tool_client
    stream = client.chat.completions.create(model="fake", messages=QUESTION, tools=TOOLS, stream=True,
                                            stream_options={"include_usage": True})
    name, arguments, finish, usage = "", "", None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                name += tc.function.name or ""
                arguments += tc.function.arguments or ""
            finish = c.finish_reason or finish
    assert name == "move" and json.loads(arguments) == {"direction": "north", "steps": 2}
    assert finish == "tool_calls" and usage.completion_tokens == 1
