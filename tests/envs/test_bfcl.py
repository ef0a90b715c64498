"""BFCL multi-turn (package bfcl-eval) as an environment: gold replay through the runner and
grounding passes the package's own checker; perturbed replays fail it; episodes are isolated."""
import json
import random

import pytest

pytest.importorskip("bfcl_eval", reason="bfcl-eval not installed: pip install --no-deps bfcl-eval==2026.3.23 mpmath")

from agent.episode import RunnerConfig, run_episode  # noqa: E402
from agent.policies import ExpertPolicy, PolicyOutput, ScriptedPolicy, tool_call  # noqa: E402
from agent.replay import audit, record_script  # noqa: E402
from envs import bfcl_data as data  # noqa: E402
from envs.base import Action, Task  # noqa: E402
from envs.bfcl import BfclEnv, all_tasks, entry_index  # noqa: E402
from envs.registry import sample_tasks  # noqa: E402

CFG = RunnerConfig(max_steps=64)


def _sample(per_category: int, seed: int = 0) -> list[Task]:
    rng = random.Random(seed)
    # entry 173 (a string ticket id where the doc says integer) and miss_func 49 (a held-out function
    # called early) are the ground truth's own quirks: always in the sample
    fixed = [Task("bfcl", "multi_turn_base", 173, "all"), Task("bfcl", "multi_turn_miss_func", 49, "all")]
    return fixed + [Task("bfcl", c, i, "all") for c in data.CATEGORIES for i in rng.sample(range(200), per_category)]


def _gold_passes(env, tasks):
    failures = []
    for task in tasks:
        ep = run_episode(env, ExpertPolicy(), task, CFG)
        turns = [s.info["turn_passed"] for s in ep.steps if "turn_passed" in s.info]
        if not (ep.success and ep.end_reason == "success" and ep.invalid_actions == 0 and all(turns)
                and len(turns) == len(env.entry["question"])):
            failures.append((task.task_id, ep.end_reason, [s.feedback[:120] for s in ep.steps if not s.valid]))
    return failures


def test_gold_replay_passes_the_package_checker_on_a_sample():
    assert _gold_passes(BfclEnv(), _sample(8)) == []


@pytest.mark.slow
def test_gold_replay_passes_the_package_checker_on_all_800():
    tasks = all_tasks()
    assert len(tasks) == 800
    assert _gold_passes(BfclEnv(), tasks) == []


def test_perturbed_replays_fail_and_are_counted():
    report = audit(BfclEnv(), _sample(5, seed=1), CFG)
    assert report["expert_passed"] == report["replay_passed"] == report["tasks"] == 22
    drop, change = report["perturbed"]["drop_call"], report["perturbed"]["change_argument"]
    assert drop["runs"] == change["runs"] == 22
    for row in (drop, change):
        assert row["failed"] + len(row["passed"]) == row["runs"]
        assert row["false_success"] <= row["failed"]
    # A change the checker cannot see (e.g. ls(a=False) where nothing is hidden) passes, and is listed.
    assert drop["failed"] >= 21 and change["failed"] >= 18


def test_false_success_after_a_wrong_call():
    env, task = BfclEnv(), Task("bfcl", "multi_turn_base", 0, "all")
    script = record_script(run_episode(env, ExpertPolicy(), task, CFG))
    wrong = [PolicyOutput(tool_calls=[tool_call("mkdir", {"dir_name": "tmp"})]) if i == 0 else s for i, s in enumerate(script)]
    ep = run_episode(env, ScriptedPolicy({task.task_id: wrong}), task, CFG)
    assert ep.claimed_done and not ep.success and ep.false_success
    assert ep.steps[1].info["turn_passed"] is False and ep.progress == 0.0


def test_bad_calls_get_grounding_feedback_and_nothing_raises():
    env, task = BfclEnv(), Task("bfcl", "multi_turn_base", 0, "all")
    bad = [PolicyOutput(tool_calls=[tool_call("format_disk", {})]),
           PolicyOutput(tool_calls=[tool_call("cd", {"folder": 3})]),
           PolicyOutput(tool_calls=[{"id": "x", "type": "function", "function": {"name": "cd", "arguments": "{'folder'"}}]),
           "<tool_call>{not json}</tool_call>"]
    script = record_script(run_episode(env, ExpertPolicy(), task, CFG))
    ep = run_episode(env, ScriptedPolicy({task.task_id: bad + script}), task, RunnerConfig(max_steps=64, max_retries=0))
    feedback = [s.feedback for s in ep.steps[:4]]
    assert "unknown function 'format_disk'" in feedback[0]
    assert "argument 'folder' must be string, got integer 3" in feedback[1]
    assert "malformed JSON arguments" in feedback[2] and "malformed JSON in <tool_call>" in feedback[3]
    assert ep.success and ep.invalid_actions == 4  # the episode went on to pass
    # the environment itself answers anything with feedback, never an exception
    env.reset(task)
    for action in (Action("nope"), Action("cd", {"folder": None}), Action("cd", {"wrong": 1}), Action("ls", {"a": "x" * 10})):
        assert isinstance(env.step(action).feedback, str)
    assert env.step(Action("respond", {"content": "?"})).terminated is False


def test_episodes_are_isolated_and_release_the_package_cache():
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils as mu

    def cached():
        return sum(k.startswith("lam_") for k in vars(mu))

    before = cached()
    a, b, task = BfclEnv(), BfclEnv(), Task("bfcl", "multi_turn_base", 0, "all")
    a.reset(task)
    b.reset(task)  # same entry, same process: separate API instances
    a.step(Action("mkdir", {"dir_name": "only_in_a"}))
    assert "only_in_a" in a.step(Action("ls", {})).feedback and "only_in_a" not in b.step(Action("ls", {})).feedback
    ep = run_episode(b, ExpertPolicy(), task, CFG)  # b's reset starts clean; a's state does not leak in
    assert ep.success
    a.close(), b.close()
    assert cached() == before


def test_miss_func_and_miss_param_turns_follow_the_package():
    env = BfclEnv()
    obs = env.reset(Task("bfcl", "multi_turn_miss_func", 0, "all"))
    assert "sort" not in [t["function"]["name"] for t in env.action_space().tools]
    ep = run_episode(env, ExpertPolicy(), Task("bfcl", "multi_turn_miss_func", 0, "all"), CFG)
    # turn 2 asks for a sort with no sort function: the expert asks instead of calling (empty ground truth)
    asked = next(s for s in ep.steps if s.claim == "give_up")
    assert asked.info["turn"] == 2 and asked.info["turn_passed"] and not asked.tool_calls
    # turn 3 is the package's holdout turn: its own user message, and sort joins the tools
    holdout_turn = ep.steps[ep.steps.index(asked) + 1]
    assert json.loads(holdout_turn.state)["turn"] == 3 and holdout_turn.tool_calls[0]["name"] == "sort"
    assert "sort" in [t["function"]["name"] for t in env.action_space().tools]
    assert ep.success and obs.user_messages and ep.request.count("\n") == 4
    ep = run_episode(env, ExpertPolicy(), Task("bfcl", "multi_turn_miss_param", 0, "all"), CFG)
    assert ep.success and [s.info["turn_passed"] for s in ep.steps if "turn_passed" in s.info] == [True] * 5
    # calling anything in a turn whose ground truth is empty fails that turn (the package's irrelevance check)
    script = record_script(ep)
    k = next(i for i, s in enumerate(script) if isinstance(s, str) and "cannot" in s)
    eager = script[:k] + [PolicyOutput(tool_calls=[tool_call("ls", {})])] + script[k:]
    ep = run_episode(env, ScriptedPolicy({"multi_turn_miss_param/0": eager}), Task("bfcl", "multi_turn_miss_param", 0, "all"), CFG)
    assert [s.info["turn_passed"] for s in ep.steps if "turn_passed" in s.info][3] is False


def test_destructive_calls_carry_a_safety_class_the_guard_enforces():
    env, task = BfclEnv(), Task("bfcl", "multi_turn_base", 2, "all")
    env.reset(task)
    assert env.action_safety(Action("rm", {"file_name": "x"})) == "confirm"
    assert env.action_safety(Action("ls", {})) == "allowed"
    script = [PolicyOutput(tool_calls=[tool_call("cd", {"folder": "documents"}), tool_call("rm", {"file_name": "ideas.txt"}),
                                       tool_call("ls", {})])]
    ep = run_episode(env, ScriptedPolicy({task.task_id: script}), task, RunnerConfig(max_steps=2, safety={"rm": "forbidden"}))
    first = ep.steps[0]
    assert first.blocked and ep.blocked_actions == 1 and "forbidden" in first.tool_results[1]
    assert "ideas.txt" in first.tool_results[2]  # never executed: the file is still there
    assert all("rm(" not in c for turn in env.calls for c in turn)


def test_state_is_json_tool_results_and_api_summary():
    env = BfclEnv()
    obs = env.reset(Task("bfcl", "multi_turn_long_context", 3, "all"))
    state = json.loads(obs.state)
    assert state["turn"] == 0 and state["tool_results"] == [] and set(state["apis"]) <= set(env.entry["involved_classes"])
    assert obs.state == env.reset(Task("bfcl", "multi_turn_long_context", 3, "all")).state  # deterministic
    r = env.step(Action("ls", {"a": True})) if "GorillaFileSystem" in env.entry["involved_classes"] else None
    if r:
        assert json.loads(r.observation.state)["tool_results"] == [r.feedback]


def test_splits_are_disjoint_and_unsupported_categories_are_named():
    train = {entry_index(t) for t in sample_tasks("bfcl", ["multi_turn_base"], "train", 160)}
    test = {entry_index(t) for t in sample_tasks("bfcl", ["multi_turn_base"], "test", 40)}
    assert len(train) == 160 and len(test) == 40 and not train & test
    with pytest.raises(ValueError, match="WebSearchAPI .*network"):
        data.category_of("web_search_base")
    with pytest.raises(ValueError, match="MemoryAPI"):
        data.category_of("memory_kv")
