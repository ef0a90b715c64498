"""BALROG's BabyAI task set (envs/babyai_balrog.py): one level per goal type, solvable by the bot, replayable.

    .venv/bin/python -m pytest tests/envs/test_babyai_balrog.py -q
"""
from __future__ import annotations

import gymnasium as gym
import pytest
from minigrid.envs.babyai.core.verifier import (AfterInstr, BeforeInstr, GoToInstr, OpenInstr, PickupInstr,
                                                PutNextInstr)

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy
from envs.babyai import BABYAI_LEVELS, replay
from envs.babyai_balrog import GOALS, MAX_STEPS, level_id
from envs.base import Task
from envs.registry import make_env

KINDS = {"GoTo": (GoToInstr,), "Pickup": (PickupInstr,), "Open": (OpenInstr,), "PutNext": (PutNextInstr,),
         "PickupThenGoTo": (BeforeInstr, AfterInstr)}


@pytest.mark.parametrize("goal", GOALS)
def test_each_goal_level_sets_its_goal_and_the_bot_solves_it_within_balrogs_limit(goal):
    level = level_id(goal)
    assert level in BABYAI_LEVELS
    env = make_env("babyai")
    for seed in range(8):
        raw = gym.make(level).unwrapped
        raw.reset(seed=seed)
        assert isinstance(raw.instrs, KINDS[goal]), (goal, type(raw.instrs).__name__)
        assert raw.max_steps == MAX_STEPS
        objs = [o for o in raw.grid.grid if o is not None and o.type in ("key", "ball", "box")]
        if goal == "Open":  # two rooms, the door between them locked, its key in the agent's room
            assert (raw.num_rows, raw.num_cols) == (1, 2)
            door = raw.instrs.desc
            assert any(o.type == "door" and o.color == door.color and o.is_locked for o in raw.grid.grid if o)
            assert any(o.type == "key" and o.color == door.color for o in objs)
        else:
            assert (raw.num_rows, raw.num_cols) == (1, 1) and len(objs) == 8
        ep = run_episode(env, ExpertPolicy(), Task("babyai", level, seed, "train"), RunnerConfig(max_steps=MAX_STEPS))
        assert ep.success, (goal, seed)
        assert replay(level, seed, [s.action for s in ep.steps])  # plain minigrid agrees with the record
