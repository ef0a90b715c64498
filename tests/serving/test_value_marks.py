"""Value marks (serving/value_marks.py): the model's view tags values with `$k`, a reply's marks expand back to
the values, the view is prefix-stable, and on real tool-world expert episodes every argument the expert
wrote survives canonical form -> expansion unchanged."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy
from data_collection.schema import episode_rows
from envs.base import Task
from envs.registry import make_env
from serving.chat_format import template_inputs
from serving.openai_server import create_app
from serving.value_marks import MarkTable, annotate, expand_reply, marked_view, read_settings, write_settings
from tests.serving.test_serving_api_logic import FakeBackend

TOOLS = [{"type": "function", "function": {"name": "place_order", "parameters": {"type": "object", "properties": {
    "symbol": {"type": "string"}, "price": {"type": "number"}, "amount": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "rm", "parameters": {"type": "object", "properties": {
        "file_name": {"type": "string"}}}}}]


def test_request_values_are_marked_and_function_words_are_not():
    t = MarkTable()
    text = annotate("Buy 35 shares of TOLY at 683.44. Then move the file notes_3.md to the folder logs.", t,
                    prose_only=True)
    assert text == ("Buy 35 [$1] shares of TOLY [$2] at 683.44 [$3]. Then move the file notes_3.md [$4] to the "
                    "folder logs [$5].")  # a plain word is a value where it ends its clause; never "Buy", "the"
    assert t.values == ["35", "TOLY", "683.44", "notes_3.md", "logs"] and t.numeric[:3] == [True, False, True]


def test_tool_results_mark_leaves_not_keys_and_paths_by_component():
    t = MarkTable()
    text = annotate('{"matches": ["./recipe_23.csv"], "count": 2, "ok": true, "note": "sent to \'Mae\' today"}', t)
    assert '"matches" [' not in text and '"count" [' not in text and "true [" not in text
    assert "recipe_23.csv [$1]" in text and "2 [$2]" in text
    assert "'Mae [$3]'" in text and t.values[-1] == "sent to 'Mae' today"
    assert "." not in t.values and "./recipe_23.csv" not in t.values


def test_the_view_is_prefix_stable_and_shows_calls_by_their_marks():
    msgs = [{"role": "system", "content": "You are an agent."},
            {"role": "user", "content": "Delete the file whose name contains 'recipe'."},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "find", "arguments": {"name": "recipe"}}}]},
            {"role": "tool", "tool_call_id": "a", "content": '{"matches": ["./recipe_23.csv"]}'},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "b", "type": "function", "function": {"name": "rm", "arguments": {"file_name": "recipe_23.csv"}}}]},
            {"role": "tool", "tool_call_id": "b", "content": '{"result": "\'recipe_23.csv\' removed"}'},
            {"role": "assistant", "content": "Done. I removed recipe_23.csv."}]
    view, table = marked_view(msgs)
    assert view[0] == msgs[0]
    recipe, found = table.index["recipe"], table.index["recipe_23.csv"]
    assert view[1]["content"].endswith(f"'recipe [${recipe}]'.")
    assert view[3]["content"] == f'{{"matches": ["./recipe_23.csv [${found}]"]}}'
    assert view[2]["tool_calls"][0]["function"]["arguments"] == {"name": f"${recipe}"}
    assert view[4]["tool_calls"][0]["function"]["arguments"] == {"file_name": f"${found}"}
    assert view[6]["content"] == f"Done. I removed ${found}."
    for k in range(len(msgs)):  # the marks of message i depend on messages[:i+1] only
        assert marked_view(msgs[:k])[0] == view[:k]
    assert msgs[4]["tool_calls"][0]["function"]["arguments"] == {"file_name": "recipe_23.csv"}  # input untouched


def test_a_reply_expands_to_typed_values_and_unknown_marks_stay():
    t = MarkTable()
    annotate("Buy 35 shares of TOLY at 683.44.", t, prose_only=True)
    calls = [{"id": "c", "type": "function", "function": {"name": "place_order",
                                                          "arguments": '{"symbol": "$2", "price": "$3", "amount": "$1"}'}}]
    content, out = expand_reply("Buying $2 for $3, not $9.", calls, t, TOOLS)
    assert json.loads(out[0]["function"]["arguments"]) == {"symbol": "TOLY", "price": 683.44, "amount": 35}
    assert content == "Buying TOLY for 683.44, not $9."
    _, bad = expand_reply(None, [{**calls[0], "function": {"name": "place_order", "arguments": "not json $2"}}], t, TOOLS)
    assert bad[0]["function"]["arguments"] == "not json TOLY"  # left for grounding to reject, values expanded


@pytest.mark.parametrize("level", ["L1", "L2", "L3", "L4", "L5"])
def test_expert_arguments_survive_the_view_and_expansion(level):
    """Every expert call of real tool-world episodes: canonical form in the view, expanded back -> the same call."""
    env = make_env("toolworld")
    marked = 0
    for seed in range(12):
        rows = episode_rows(run_episode(env, ExpertPolicy(), Task("toolworld", level, seed, "test"),
                                        RunnerConfig(max_steps=12)))
        last = rows[-1]
        msgs, tools = template_inputs(last.chat_messages(), last.chat_tools())
        view, _ = marked_view(msgs)
        for i, (m, v) in enumerate(zip(msgs, view)):
            if m["role"] != "assistant" or not m.get("tool_calls"):
                continue
            table = marked_view(msgs[:i])[1]  # what the server holds when the model writes message i
            wire = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                    for c in v["tool_calls"]]
            _, back = expand_reply(None, wire, table, tools)
            for orig, got in zip(m["tool_calls"], back):
                assert json.loads(got["function"]["arguments"]) == orig["function"]["arguments"]
            marked += sum("$" in json.dumps(c["function"]["arguments"]) for c in v["tool_calls"])
    assert marked >= 12  # the calls really point at marks (a view that marks nothing would pass the loop)


def test_the_chat_route_renders_the_view_and_expands_the_reply():
    backend = FakeBackend(text='<tool_call>{"name": "rm", "arguments": {"file_name": "$1"}}</tool_call>',
                          template="{{ tools }}{% for m in messages %}{{ m.content }}|{% endfor %}")
    backend.value_marks = True
    seen = []
    render = backend.render_chat
    backend.render_chat = lambda messages, tools=None: seen.append(messages) or render(messages, tools)
    with TestClient(create_app(backend, "fake")) as c:
        r = c.post("/v1/chat/completions", json={"model": "fake", "tools": TOOLS,
                                                 "messages": [{"role": "user", "content": "Delete plan_67.csv now."}]})
    assert r.status_code == 200, r.text
    assert seen[-1][0]["content"] == "Delete plan_67.csv [$1] now."
    call = r.json()["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"file_name": "plan_67.csv"}


def test_settings_file_round_trip_and_bad_file(tmp_path):
    assert read_settings(tmp_path) == {}
    write_settings(tmp_path, True)
    assert read_settings(tmp_path) == {"value_marks": True}
    (tmp_path / "lam_chat.json").write_text('{"value_marks": "yes"}')
    with pytest.raises(ValueError, match="value_marks"):
        read_settings(tmp_path)
