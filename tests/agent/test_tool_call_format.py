"""The Hermes tool-call format has one home (agent/tool_call_format.py); serving/ keeps the one copy its
layering allows, and the writers and readers round-trip through it."""
import json

from agent.grounding import _calls_from_text
from agent.policies import PolicyOutput, tool_call
from agent.tool_call_format import TOOL_CALL_RE, call_texts, format_call, format_call_raw
from serving import chat_format


def test_serving_copy_matches_the_one_format():
    assert chat_format._TOOL_CALL_RE.pattern == TOOL_CALL_RE.pattern
    assert chat_format._TOOL_CALL_RE.flags == TOOL_CALL_RE.flags


def test_written_calls_parse_back():
    out = PolicyOutput("ok", [tool_call("move", {"to": "door é"}), tool_call("look", {})])
    text = out.to_text()
    assert text == "ok\n" + format_call({"name": "move", "arguments": {"to": "door é"}}) + "\n" + \
        format_call({"name": "look", "arguments": {}})
    calls, errors = _calls_from_text(text)
    assert not errors and [c["function"]["name"] for c in calls] == ["move", "look"]
    raw = format_call_raw("move", json.dumps({"to": "door"}))
    assert json.loads(call_texts(raw)[0]) == {"name": "move", "arguments": {"to": "door"}}
    assert call_texts("<tool_call>{\"name\": \"cut\"") == ['{"name": "cut"']  # cut off by max_tokens
