"""Planted false successes and replays in the generated tool world.

    .venv/bin/python -m pytest -q tests/envs/test_toolworld_planted.py
"""
from __future__ import annotations

import json

from agent.episode import RunnerConfig, run_episode
from agent.policies import PrefixExpertPolicy
from cluster.cli import main as lam
from envs.registry import make_env, sample_tasks


def test_prefix_expert_plants_false_successes_in_a_tool_world():
    """The prefix-expert plays the planner for a random prefix, then replies "Done.": every claim made
    before the plan was complete is a false success the environment's verdict exposes."""
    env = make_env("toolworld")
    false_success = true_success = 0
    for task in sample_tasks("toolworld", ["L4", "L5"], "test", 24):
        ep = run_episode(env, PrefixExpertPolicy(seed=1, max_prefix=6), task, RunnerConfig(max_steps=16))
        assert ep.claimed_done, "the prefix-expert always claims done"
        false_success += not ep.success
        true_success += ep.success
    assert false_success >= 5 and true_success >= 2, (false_success, true_success)


# issue 21 item 8: replay works for every environment that records its actions, the tool world too
def test_replay_of_a_toolworld_evaluation_matches(ray_local, tmp_path, capsys):
    out = tmp_path / "eval"
    assert lam(["eval", "--env", "toolworld", "--levels", "L3,L5", "--policy", "prefix-expert", "--episodes", "3",
                "--workers", "1", "--no-html", "--out", str(out)]) == 0
    capsys.readouterr()
    assert lam(["eval", "--replay", str(out / "prefix-expert")]) == 0
    assert json.loads(capsys.readouterr().out) == {"checked": 6, "mismatched": []}
