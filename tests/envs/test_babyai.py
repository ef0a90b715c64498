import re

import numpy as np
import pytest

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy, RandomPolicy
from envs.babyai import ACTION_NAMES, BabyAIEnv, replay
from envs.base import Action, Task
from envs.registry import TEST_SEEDS, TRAIN_SEEDS, sample_tasks

LEVEL = "BabyAI-GoToLocal-v0"


def _true_relative(env: BabyAIEnv, pos) -> tuple[int, int]:
    """(forward, right) of a grid cell relative to the agent, from minigrid's own vectors."""
    u = env.unwrapped
    d = np.array(pos) - np.array(u.agent_pos)
    return int(d @ u.dir_vec), int(d @ u.right_vec)


def test_text_positions_match_the_grid():
    env = BabyAIEnv()
    checked = 0
    for seed in range(20):
        obs = env.reset(Task("babyai", LEVEL, seed))
        u = env.unwrapped
        for line in obs.state.splitlines()[1:]:
            m = re.match(r"a (\w+) (ball|box|key) (.*)$", line)
            if not m:
                continue
            color, kind, where = m.groups()
            fwd = int(re.search(r"(\d+) steps? forward", where).group(1)) if "forward" in where else 0
            left = re.search(r"(\d+) steps? left", where)
            right = re.search(r"(\d+) steps? right", where)
            side = -int(left.group(1)) if left else int(right.group(1)) if right else 0
            matches = [
                obj for obj in u.grid.grid if obj is not None and obj.type == kind and obj.color == color
                and _true_relative(env, obj.cur_pos) == (fwd, side)
            ]
            assert matches, f"seed {seed}: {line!r} is not where the text says"
            checked += 1
    assert checked > 50


def test_state_text_has_mission_direction_and_carrying():
    env = BabyAIEnv()
    obs = env.reset(Task("babyai", LEVEL, 3))
    assert obs.request.startswith("go to")
    assert re.match(r"facing (east|south|west|north), carrying nothing", obs.state.splitlines()[0])


def test_bot_solves_and_replay_agrees_for_every_policy():
    env = BabyAIEnv()
    for policy in (ExpertPolicy(), RandomPolicy(seed=1)):
        wins = 0
        for task in sample_tasks("babyai", [LEVEL], "test", 25):
            ep = run_episode(env, policy, task, RunnerConfig(max_steps=64))
            wins += ep.success
            actions = [s.action for s in ep.steps]
            assert replay(task.level, task.seed, actions) == ep.success
        if policy.name == "expert":
            assert wins == 25
        else:
            assert wins < 25


def test_seed_splits_are_disjoint():
    train = sample_tasks("babyai", [LEVEL], "train", 100)
    test = sample_tasks("babyai", [LEVEL], "test", 100)
    assert all(TRAIN_SEEDS[0] <= t.seed < TRAIN_SEEDS[1] for t in train)
    assert all(TEST_SEEDS[0] <= t.seed < TEST_SEEDS[1] for t in test)
    assert not {t.seed for t in train} & {t.seed for t in test}


def test_unknown_level_and_action_are_named():
    with pytest.raises(ValueError, match="BabyAI-Nope-v0"):
        sample_tasks("babyai", ["BabyAI-Nope-v0"], "train", 1)
    env = BabyAIEnv()
    env.reset(Task("babyai", LEVEL, 0))
    with pytest.raises(ValueError, match="fly"):
        env.step(Action("fly"))


def test_feedback_reports_blocked_moves_and_pickups():
    env = BabyAIEnv()
    env.reset(Task("babyai", "BabyAI-PickupLoc-v0", 0))
    # walk forward until blocked: the feedback must say so, and the position must not change
    for _ in range(10):
        before = tuple(env.unwrapped.agent_pos)
        r = env.step(Action("go forward"))
        if tuple(env.unwrapped.agent_pos) == before:
            assert r.feedback.startswith("blocked")
            break
    else:
        pytest.fail("never blocked in 10 steps of an 8x8 room")
    r = env.step(Action("drop"))
    assert r.feedback == "nothing dropped"


def test_unsolvable_levels_are_not_offered():
    from envs.babyai import BABYAI_LEVELS

    assert "BabyAI-KeyInBox-v0" not in BABYAI_LEVELS
    assert "BabyAI-PutNextS5N2Carrying-v0" not in BABYAI_LEVELS
    assert LEVEL in BABYAI_LEVELS and set(ACTION_NAMES) >= {"turn left", "go forward", "done"}
