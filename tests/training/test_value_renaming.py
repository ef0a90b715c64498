"""Value renaming (training/value_renaming.py) on real tool-world episodes: values are respelled consistently
through the conversation, so the marked view's calls (what the model learns to write) are exactly the
original's, while the names it points at are new; the job's own words, numbers and text spaces stay."""
from __future__ import annotations

import copy
import json
import random

import pytest

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy
from data_collection.schema import episode_rows
from envs.base import Task
from envs.registry import make_env
from serving.chat_format import template_inputs
from serving.value_marks import marked_view
from training.samples import Conversation, episode_conversations
from training.value_renaming import rename_values, renamed


def _conv(level: str, seed: int) -> Conversation:
    ep = run_episode(make_env("toolworld"), ExpertPolicy(), Task("toolworld", level, seed, "train"), RunnerConfig(max_steps=12))
    assert ep.success
    return episode_conversations([episode_rows(ep)])[-1]


def _calls(view: list[dict]) -> list:
    return [(m.get("content"), [(c["function"]["name"], c["function"]["arguments"]) for c in m.get("tool_calls") or []])
            for m in view if m["role"] == "assistant"]


@pytest.mark.parametrize("level", ["L1", "L2", "L3", "L4", "L5"])
def test_renaming_keeps_what_the_model_learns_to_write_and_changes_the_names(level):
    rng = random.Random(1)
    changed = 0
    for seed in range(8):
        c = _conv(level, seed)
        original = copy.deepcopy(c.messages)
        r = rename_values(c.messages, c.tools, rng)
        before, _ = marked_view(template_inputs(c.messages, c.tools)[0])
        after, _ = marked_view(template_inputs(r, c.tools)[0])
        assert _calls(after) == _calls(before)  # same marks in the same places: the world stayed consistent
        assert [m["role"] for m in r] == [m["role"] for m in c.messages]
        changed += r[1]["content"] != c.messages[1]["content"] if c.messages[0]["role"] == "system" else \
            r[0]["content"] != c.messages[0]["content"]
        assert c.messages == original  # the input conversation is not modified
    assert changed >= 6  # nearly every request names something


def test_a_find_then_remove_episode_is_renamed_consistently():
    c = _conv("L3", 1)  # "Delete the file whose name contains 'WORD'": find(WORD) -> ./WORD_NN.ext -> rm(WORD_NN.ext)
    r = rename_values(c.messages, c.tools, random.Random(0))
    calls = [json.loads(tc["function"]["arguments"]) for m in r for tc in m.get("tool_calls") or []]
    word = calls[0]["name"]
    assert word not in json.dumps(c.messages)  # a new spelling
    assert calls[1]["file_name"].startswith(word + "_")  # the found file carries the same new word
    assert word in r[[m["role"] for m in r].index("tool")]["content"]  # and the result says so
    assert [tc["function"]["name"] for m in r for tc in m.get("tool_calls") or []] == ["find", "rm"]


def test_the_jobs_words_numbers_and_text_spaces_stay():
    c = Conversation([{"role": "user", "content": "Buy 35 shares of TOLY at 683.44. Add Mae to my watchlist."},
                      {"role": "assistant", "content": "Done. 683.44"}], [{"type": "function", "function": {
                          "name": "place_order", "parameters": {"properties": {"symbol": {"type": "string"}}}}}], [1])
    r = rename_values(c.messages, c.tools, random.Random(0))[0]["content"]
    assert r.startswith("Buy 35 shares of ") and "at 683.44. Add " in r and r.endswith(" to my watchlist.")
    assert "TOLY" not in r and "Mae" not in r
    text = Conversation([{"role": "user", "content": "go to the red ball"}, {"role": "assistant", "content": "left"}], [], [1])
    out = renamed([text, c], 1.0, seed=0)
    assert out[0] is text and out[1].messages != c.messages
    assert renamed([text, c], 0.0, seed=0) == [text, c]
