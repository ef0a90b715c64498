"""The one runner on a tool space (a toy notes world, no packages): tool calls, grounding feedback,
claims per turn vs the verdict, the safety guard, memory in prompts and transcripts."""
import json
import time

import pytest

from agent.episode import RunnerConfig, run_episode
from agent.grounding import check_arguments, ground, message_claim
from agent.memory import EpisodicStore, Memory, MemoryConfig, state_delta
from agent.policies import ExpertPolicy, ModelPolicy, PolicyError, PolicyOutput, ScriptedPolicy, tool_call
from envs.base import Action, Task
from tests.agent.fake_openai import FakeOpenAI
from tests.agent.toy_tools import TOOLS, NotesEnv

TASK = Task("notes", "two-turns", 0)


def _calls(*pairs):
    return PolicyOutput(tool_calls=[tool_call(n, a) for n, a in pairs])


class _Recorder(ScriptedPolicy):
    def begin(self, env, task):
        super().begin(env, task)
        self.seen = []

    def act(self, messages, env, step, attempt):
        self.seen.append(messages)
        return super().act(messages, env, step, attempt)


def test_expert_drives_a_tool_world_turn_by_turn():
    env = NotesEnv()
    ep = run_episode(env, ExpertPolicy(), TASK, RunnerConfig())
    assert ep.success and ep.end_reason == "success" and ep.claimed_done and ep.claim == "done"
    assert [s.claim for s in ep.steps] == ["", "done", "", "done"]  # each closing message claims its turn
    assert [s.claimed_done for s in ep.steps] == [False, False, False, True]  # only the last ends the episode
    assert ep.steps[0].tool_results == ["added note 0", "added note 1"]
    assert ep.steps[0].action.startswith('<tool_call>{"name": "add_note"')
    assert ep.steps[2].confirmed == 1  # delete_note needs confirmation: approved in batch runs, and counted


def test_the_model_sees_an_openai_tool_conversation():
    script = [_calls(("add_note", {"text": "milk"}), ("add_note", {"text": "eggs"})), "Done.",
              _calls(("delete_note", {"index": 0})), "Done."]
    policy = _Recorder({TASK.task_id: script})
    ep = run_episode(NotesEnv(), policy, TASK, RunnerConfig())
    assert ep.success
    last = policy.seen[-1]
    assert [m["role"] for m in last] == ["user", "assistant", "tool", "tool", "assistant", "user", "assistant", "tool"]
    assert last[0]["content"] == "Add the notes 'milk' and 'eggs'." and last[5]["content"] == "Now delete the first note."
    call = last[1]["tool_calls"][0]
    assert call["function"] == {"name": "add_note", "arguments": '{"text": "milk"}'}
    assert last[2] == {"role": "tool", "tool_call_id": call["id"], "content": "added note 0"}


@pytest.mark.parametrize("bad, expect", [
    (_calls(("shred_notes", {})), "unknown function 'shred_notes'"),
    (_calls(("add_note", {"text": 5})), "argument 'text' must be string, got integer 5"),
    (_calls(("add_note", {})), "missing required argument 'text'"),
    (_calls(("add_note", {"text": "a", "color": "red"})), "unexpected argument 'color'"),
    (_calls(("delete_note", {"index": "0"})), "argument 'index' must be integer"),
    (PolicyOutput(tool_calls=[{"id": "c1", "type": "function", "function": {"name": "add_note", "arguments": '{"text": "mi'}}]),
     "malformed JSON arguments"),
    (PolicyOutput(content='<tool_call>{"name": "add_note", "arguments": {"text": </tool_call>'), "malformed JSON in <tool_call>"),
    (_calls(("delete_note", {"index": 3})), "there is no note 3 (there are 0)"),
])
def test_bad_tool_calls_get_feedback_and_the_episode_goes_on(bad, expect):
    env = NotesEnv()
    gold = [_calls(("add_note", {"text": "milk"}), ("add_note", {"text": "eggs"})), "Done.",
            _calls(("delete_note", {"index": 0})), "Done."]
    policy = _Recorder({TASK.task_id: [bad] + gold})
    ep = run_episode(env, policy, TASK, RunnerConfig(max_retries=1))
    first = ep.steps[0]
    assert not first.valid and first.retries == 1 and expect in first.feedback
    assert "Nothing was executed" in first.feedback and not env.executed[0].name == "shred_notes"
    assert expect in policy.seen[1][-1]["content"]  # the retry is told why
    # the next step's conversation holds the user turn once, then the rejected output and why
    assert [m["role"] for m in policy.seen[2]] == ["user", "assistant", "user"]
    assert policy.seen[2][0]["content"] == "Add the notes 'milk' and 'eggs'." and expect in policy.seen[2][2]["content"]
    assert ep.success and ep.invalid_actions == 2  # then the episode continued to the end


def test_hermes_text_calls_ground_like_openai_calls():
    space = NotesEnv().action_space()
    g = ground('<tool_call>{"name": "add_note", "arguments": {"text": "x"}}</tool_call>', space)
    assert g.ok and g.actions == [Action("add_note", {"text": "x"})]
    g = ground("All done!", space)
    assert g.ok and g.actions == [Action("respond", {"content": "All done!"})] and g.claim == "done"


def test_claims_are_kept_apart_from_the_verdict():
    wrong = [_calls(("add_note", {"text": "milk"})), "Done.", _calls(("list_notes", {})), "All done, both notes handled."]
    ep = run_episode(NotesEnv(), ScriptedPolicy({TASK.task_id: wrong}), TASK, RunnerConfig())
    assert ep.claimed_done and not ep.success and ep.false_success and ep.end_reason == "claimed_done"
    gave_up = [_calls(("add_note", {"text": "milk"})), "Done.", "I cannot do that: which note do you mean?"]
    ep = run_episode(NotesEnv(), ScriptedPolicy({TASK.task_id: gave_up}), TASK, RunnerConfig())
    assert ep.claim == "give_up" and not ep.claimed_done and not ep.false_success and ep.end_reason == "gave_up"
    assert message_claim("") == "" and message_claim("Which file?") == "give_up"
    assert message_claim("The parameter is missing; please provide it.") == "give_up"
    assert message_claim("I moved the file to temp.") == "done"


@pytest.mark.parametrize("runner", [dict(safety={"delete_note": "forbidden"}), dict(safety={"confirm": "forbidden"}),
                                    dict(confirm="deny")])
def test_safety_guard_blocks_counts_and_never_executes(runner):
    env = NotesEnv()
    ep = run_episode(env, ExpertPolicy(), TASK, RunnerConfig(**runner))
    blocked = [s for s in ep.steps if s.blocked]
    assert len(blocked) == 1 and ep.blocked_actions == 1
    assert "was not executed" in blocked[0].tool_results[0]
    assert "delete_note" not in [a.name for a in env.executed] and env.notes == ["milk", "eggs"]
    assert not ep.success and ep.false_success  # it still claimed done: the verdict says otherwise


def test_argument_checker_covers_the_schema_subset():
    schema = {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "array", "items": {"type": "number"}}, "b": {"type": "string", "enum": ["x", "y"]},
        "c": {"type": ["integer", "string"]}, "d": {"type": "object", "properties": {"e": {"type": "boolean"}}}}}
    assert check_arguments({"a": [1, 2.5], "b": "x", "c": "id", "d": {"e": True}}, schema) == []
    problems = check_arguments({"a": [1, "2"], "b": "z", "c": 1.5, "d": {"e": 1}}, schema)
    assert any("a[1]" in p for p in problems) and any("one of" in p for p in problems)
    assert any("'c' must be integer or string" in p for p in problems) and any("d.e" in p for p in problems)
    assert check_arguments({"a": True}, schema) == ["argument 'a' must be array, got boolean true"]


def test_memory_is_off_by_default_and_visible_when_on(tmp_path):
    env = NotesEnv()
    ep = run_episode(env, ExpertPolicy(), TASK, RunnerConfig())
    assert all(s.memory == "" for s in ep.steps) and ep.examples == []
    store = EpisodicStore(str(tmp_path / "mem.jsonl"))
    cfg = RunnerConfig(memory={"short_term_k": 2, "long_term_k": 1, "store_path": str(tmp_path / "mem.jsonl")})
    first = run_episode(env, ExpertPolicy(), TASK, cfg, episode_id="a", memory=Memory(MemoryConfig(**cfg.memory), store))
    assert "Recent steps" in first.steps[1].memory and "changed: +notes[0]" in first.steps[1].memory
    assert len(store) == 1  # a verified success was remembered
    policy = _Recorder({})
    second = run_episode(env, policy, TASK, cfg, episode_id="b", memory=Memory(MemoryConfig(**cfg.memory), store))
    assert second.examples[0]["episode_id"] == "a"
    assert policy.seen[0][0]["role"] == "system" and "Solved examples" in policy.seen[0][0]["content"]
    assert "add_note" in second.steps[0].memory
    # persisted: a new store reads it back, skipping a torn last line from a crash
    with open(tmp_path / "mem.jsonl", "a") as f:
        f.write('{"env": "notes", "episo')
    assert len(EpisodicStore(str(tmp_path / "mem.jsonl"))) == 1
    assert json.loads(json.dumps(second.transcript()))["examples"][0]["episode_id"] == "a"


def test_episodic_store_ranks_by_similarity_of_request_and_state():
    store = EpisodicStore()
    store.add("babyai", "1", "go to the red ball", "a red ball 2 steps forward", ["go forward"])
    store.add("babyai", "2", "pick up the blue key", "a blue key 1 step left", ["turn left", "pick up"])
    store.add("bfcl", "3", "pick up the blue key", "x", ["nope"])
    hits = store.search("babyai", "pick up a blue key", "a blue key 3 steps forward", k=2)
    assert [h["episode_id"] for h in hits][:1] == ["2"] and all(h["episode_id"] != "3" for h in hits)
    assert state_delta('{"a": 1, "b": [1]}', '{"a": 2, "b": [1]}') == "+a = 2; -a = 1"


def test_model_endpoint_down_is_a_clear_policy_error():
    policy = ModelPolicy("http://127.0.0.1:9/v1", "m", retries=1, timeout_s=2)
    ep = run_episode(NotesEnv(), policy, TASK, RunnerConfig())
    assert ep.end_reason == "policy_error" and "unreachable" in ep.error and "127.0.0.1:9" in ep.error
    with pytest.raises(PolicyError, match="failed after 2 tries"):
        policy.act([{"role": "user", "content": "x"}], NotesEnv(), 0, 0)


def test_model_policy_sends_tools_and_grounds_what_comes_back():
    replies = [[("add_note", '{"text": "mi')],  # malformed JSON: feedback, retry
               [("add_note", '{"text": "milk"}'), ("add_note", '{"text": "eggs"}')], "Done.",
               [("delete_note", '{"index": "first"}')],  # ill-typed: feedback, retry
               [("delete_note", '{"index": 0}')], "All done."]
    fake = FakeOpenAI(replies)
    with fake as url:
        ep = run_episode(NotesEnv(), ModelPolicy(url, "m", retries=0), TASK, RunnerConfig())
    assert ep.success and ep.claimed_done and ep.invalid_actions == 2
    assert "malformed JSON arguments" in fake.requests[1]["messages"][-1]["content"]
    assert "must be integer" in fake.requests[4]["messages"][-1]["content"]
    assert fake.requests[0]["tools"] == TOOLS and fake.requests[0]["max_tokens"] == 512
    assert fake.requests[2]["messages"][-1]["role"] == "tool"  # results went back as tool messages
    with fake as url:  # a model the server does not know: rejected at once, not retried
        ep = run_episode(NotesEnv(), ModelPolicy(url, "nope", retries=3), TASK, RunnerConfig())
    assert ep.end_reason == "policy_error" and "HTTP 404" in ep.error and "not found" in ep.error


def test_episode_time_limit_interrupts_a_slow_model_and_is_not_retried():
    with FakeOpenAI(["Done."], delay=3.0) as url:
        t0 = time.perf_counter()
        ep = run_episode(NotesEnv(), ModelPolicy(url, "m", retries=3, timeout_s=30), TASK, RunnerConfig(time_limit_s=1.0))
        elapsed = time.perf_counter() - t0
    assert ep.end_reason == "time_limit" and elapsed < 4
