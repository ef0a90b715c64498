"""The generated tool world (envs/toolworld*.py) through the real episode runner: the expert solves
every level on both splits, random does not, the verdict cannot be talked into a success, the splits
share no name or value, and safety, grounding and memory work unchanged (issue 16 items 3 and 5)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bfcl_eval", reason="bfcl-eval not installed: pip install --no-deps bfcl-eval==2026.3.23 mpmath")

from agent.episode import RunnerConfig, run_episode  # noqa: E402
from agent.memory import EpisodicStore, Memory, MemoryConfig  # noqa: E402
from agent.policies import ExpertPolicy, PolicyOutput, RandomPolicy, ScriptedPolicy, tool_call  # noqa: E402
from agent.replay import record_script  # noqa: E402
from envs.base import Action, Task  # noqa: E402
from envs.registry import get_env_spec, make_env, sample_tasks  # noqa: E402
from envs.toolworld import replay  # noqa: E402
from envs.toolworld_tasks import LEVELS, QUESTION, generate, glue_held_out, held_out, junctions  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CFG = RunnerConfig(max_steps=20)
READS = {"ls", "find", "cat", "get_user_id", "get_stock_info", "get_watchlist", "get_ticket"}


def _task_of_kinds(level: str, kinds: tuple, split: str = "train") -> Task:
    seed = next(s for s in range(5000) if generate(level, split, s).kinds == kinds)
    return Task("toolworld", level, seed, split)


def _calls(ep) -> int:
    return sum(len(s.tool_calls) for s in ep.steps)


# issue 16 item 3
@pytest.mark.parametrize("split", ["train", "test"])
def test_expert_solves_every_level_and_random_does_not(split):
    env = make_env("toolworld")
    assert get_env_spec("toolworld").levels == ("L1", "L2", "L3", "L4", "L5")
    mean_calls = {}
    for level in LEVELS:
        tasks = sample_tasks("toolworld", [level], split, 50)
        eps = [run_episode(env, ExpertPolicy(), t, CFG) for t in tasks]
        failed = [(e.task.task_id, e.end_reason, [s.feedback[:80] for s in e.steps]) for e in eps if not e.success]
        assert failed == []
        assert all(e.end_reason == "success" and e.claimed_done and e.invalid_actions == 0 for e in eps)
        assert max(_calls(e) for e in eps) <= 6
        mean_calls[level] = sum(map(_calls, eps)) / len(eps)
        randoms = [run_episode(env, RandomPolicy(seed=1), t, CFG) for t in tasks]
        assert sum(e.success for e in randoms) <= 1
    # levels grow: one call, two, a lookup chain of two, 3-4 across backends, 4-6 with an answer
    assert mean_calls["L1"] == 1 and mean_calls["L2"] == 2 and mean_calls["L3"] == 2
    assert 3 <= mean_calls["L4"] <= 4 < mean_calls["L5"] <= 6


# issue 16 item 3
def test_splits_share_no_name_or_value_and_hold_out_combinations():
    train = [generate(lv, "train", s) for lv in LEVELS for s in range(400)]
    test = [generate(lv, "test", s) for lv in LEVELS for s in range(400)]
    train_values = set().union(*(g.values for g in train))
    test_values = set().union(*(g.values for g in test))
    assert len(train) == len(test) == 2000 and len(train_values) > 1000 and len(test_values) > 500
    assert train_values.isdisjoint(test_values)
    # every name the test requests mention is a test value: a test file, contact or symbol never
    # appears in a train task
    for g in test[:200]:
        assert any(v in g.request for v in g.values)
    train_kinds = {g.kinds for g in train}
    assert not [k for k in train_kinds if len(k) > 1 and held_out(k)]
    unseen = [g for g in test if len(g.kinds) > 1 and held_out(g.kinds)]
    assert len(unseen) > 100 and not {g.kinds for g in unseen} & train_kinds
    # connector template x backends: some pairings only ever appear in test requests
    train_joints = {j for g in train for j in junctions(g.parts, g.glues)}
    test_joints = {j for g in test for j in junctions(g.parts, g.glues)}
    assert not [j for j in train_joints if glue_held_out(j)]
    assert len([j for j in test_joints - train_joints if glue_held_out(j)]) >= 5


# issue 16 item 3
def test_thousands_of_distinct_tasks_per_level():
    for level in LEVELS:
        for split in ("train", "test"):
            tasks = [generate(level, split, s) for s in range(2500)]
            assert len({g.key() for g in tasks}) >= 2450, (level, split)  # request + initial state
            assert len({g.request for g in tasks}) >= 1500, (level, split)  # the request alone


# issue 16 item 3
def test_the_verdict_cannot_be_fooled():
    env = make_env("toolworld")
    for level in LEVELS:  # "done" without a call: the state is not the goal
        task = sample_tasks("toolworld", [level], "test", 1)[0]
        ep = run_episode(env, ScriptedPolicy({task.task_id: ["All done."]}), task, CFG)
        assert not ep.success and ep.false_success and ep.end_reason == "claimed_done"
    for level in ("L2", "L3", "L4", "L5"):  # every call but the last, then "done"
        task = sample_tasks("toolworld", [level], "train", 1, base_seed=7)[0]
        script = record_script(run_episode(env, ExpertPolicy(), task, CFG))
        ep = run_episode(env, ScriptedPolicy({task.task_id: script[:-2] + ["Done."]}), task, CFG)
        assert not ep.success and ep.false_success and ep.progress < 1
    # right calls, wrong answer: the question's answer must be in the reply
    task = _task_of_kinds("L5", next(g.kinds for g in (generate("L5", "train", s) for s in range(50))
                                     if g.kinds[-1] in QUESTION))
    script = record_script(run_episode(env, ExpertPolicy(), task, CFG))
    assert "The answer is" in script[-1]
    ep = run_episode(env, ScriptedPolicy({task.task_id: script[:-1] + ["Done."]}), task, CFG)
    assert not ep.success and ep.steps[-1].info == {"state_matches": True, "reply_matches": False}
    # a wrong argument value ends in a different state
    task = _task_of_kinds("L1", ("mkdir",))
    ep = run_episode(env, ScriptedPolicy({task.task_id: [PolicyOutput(tool_calls=[tool_call("mkdir", {"dir_name": "x"})]),
                                                         "Done."]}), task, CFG)
    assert not ep.success and ep.steps[-1].info["state_matches"] is False


# issue 16 item 5
def test_destructive_calls_are_confirmed_or_forbidden_by_config():
    env = make_env("toolworld")
    task = _task_of_kinds("L3", ("find_rm",))
    approved = run_episode(env, ExpertPolicy(), task, CFG)
    assert approved.success and sum(s.confirmed for s in approved.steps) == 1  # rm needs confirmation
    assert env.action_safety(Action("rm", {"file_name": "a"})) == "confirm"
    assert env.action_safety(Action("find", {"name": "a"})) == "allowed"
    for safety, confirm in (({"rm": "forbidden"}, "approve"), ({"confirm": "forbidden"}, "approve"), ({}, "deny")):
        ep = run_episode(env, ExpertPolicy(), task, RunnerConfig(max_steps=20, safety=safety, confirm=confirm))
        blocked = [s for s in ep.steps if s.blocked]
        assert not ep.success and ep.blocked_actions == 1 and blocked[0].tool_calls[0]["name"] == "rm"
        assert "was not executed" in blocked[0].tool_results[0]
        assert not env.state_matches()  # the file is still there


# issue 16 item 5
def test_unknown_functions_and_ill_typed_arguments_get_feedback():
    env = make_env("toolworld")
    task = _task_of_kinds("L3", ("buy_market",))
    script = record_script(run_episode(env, ExpertPolicy(), task, CFG))
    order = json.loads(script[1].tool_calls[0]["function"]["arguments"])
    bad = [PolicyOutput(tool_calls=[tool_call("sell_everything", {})]),
           PolicyOutput(tool_calls=[tool_call("place_order", {**order, "amount": str(order["amount"])})]),
           PolicyOutput(tool_calls=[tool_call("rm", {"file_name": "x"})]),  # not offered: no file backend here
           "<tool_call>{not json}</tool_call>"]
    ep = run_episode(env, ScriptedPolicy({task.task_id: bad + script}), task, RunnerConfig(max_steps=20, max_retries=0))
    feedback = [s.feedback for s in ep.steps[:4]]
    assert "unknown function 'sell_everything'" in feedback[0]
    assert "argument 'amount' must be integer, got string" in feedback[1]
    assert "unknown function 'rm'" in feedback[2] and "malformed JSON in <tool_call>" in feedback[3]
    assert ep.success and ep.invalid_actions == 4  # nothing bad was executed; the episode went on to pass
    env.reset(task)  # the environment itself answers anything with feedback, never an exception
    for action in (Action("nope"), Action("get_stock_info", {"wrong": 1}), Action("place_order", {"amount": None})):
        assert isinstance(env.step(action).feedback, str)


# issue 16 item 5
def test_memory_runs_and_retrieves_past_episodes(tmp_path):
    env = make_env("toolworld")
    cfg = RunnerConfig(max_steps=20, memory={"short_term_k": 2, "long_term_k": 1, "store_path": str(tmp_path / "m.jsonl")})
    store = EpisodicStore(cfg.memory["store_path"])
    tasks = sample_tasks("toolworld", ["L3"], "train", 6)
    eps = [run_episode(env, ExpertPolicy(), t, cfg, memory=Memory(MemoryConfig(**cfg.memory), store)) for t in tasks]
    assert all(e.success for e in eps) and len(store) == 6
    last = eps[-1]
    assert last.examples and last.examples[0]["score"] > 0
    assert "Solved examples" in last.steps[0].memory and "Recent steps" in last.steps[1].memory


# issue 16 item 3
def test_episodes_replay_from_level_seed_and_actions(capsys):
    env = make_env("toolworld")
    for level in LEVELS:
        task = sample_tasks("toolworld", [level], "test", 1, base_seed=3)[0]
        ep = run_episode(env, ExpertPolicy(), task, CFG)
        actions = [Action(c["name"], c["arguments"]) for s in ep.steps for c in s.tool_calls]
        reply = Action("respond", {"content": ep.steps[-1].action})
        assert replay(level, task.seed, actions + [reply], split="test")
        last_write = max(i for i, a in enumerate(actions) if a.name not in READS)
        assert not replay(level, task.seed, actions[:last_write] + actions[last_write + 1:] + [reply], split="test")
        assert generate(level, "test", task.seed).request == ep.request  # same task, same request
    # `lam agent audit` addresses seeds directly (split "all"): the seed's range picks the pools
    from agent.replay import main as audit_main

    audit_main(["--env", "toolworld", "--levels", "L3", "--limit", "3"])
    assert json.loads(capsys.readouterr().out)["replay_passed"] == 3


# issue 16 item 3
def test_lam_collect_and_data_show_through_the_cli(tmp_path):
    out = tmp_path / "tools"
    cli = [sys.executable, "-m", "cluster.cli"]
    run = subprocess.run(cli + ["collect", "--env", "toolworld", "--levels", "L1,L2", "--episodes", "20", "--workers", "2",
                                "--out", str(out), "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["kept"] == 20
    show = subprocess.run(cli + ["data", "show", str(out), "--episode", "L2-1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert show.returncode == 0, show.stderr[-2000:]
    assert show.stdout.startswith("episode  L2-1") and "success, verified by the environment" in show.stdout
    assert "<tool_call>" in show.stdout and generate("L2", "train", 1).request.splitlines()[0] in show.stdout
