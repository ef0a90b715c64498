"""BabyAI (text actions) must see exactly what it saw before the runner learned tool calls: the same
prompts at every try, the same grounding, retries, claims and step records."""
import dataclasses
import random

from agent import episode
from agent.policies import ExpertPolicy, RandomPolicy, ScriptedPolicy
from agent.prompt import Turn, render_messages, render_training_chunks, system_prompt, user_content
from envs.babyai import ACTION_NAMES, BabyAIEnv
from envs.base import Task
from tests.agent import reference_runner


class _Recording:
    """Wraps a policy, records every prompt, and sometimes answers garbage (seeded per task)."""

    def __init__(self, inner, garbage: float = 0.0):
        self.inner, self.name, self.garbage = inner, inner.name, garbage

    def begin(self, env, task):
        self.inner.begin(env, task)
        self.seen, self.rng = [], random.Random(task.seed)

    def act(self, messages, env, step, attempt):
        self.seen.append(messages)
        if self.rng.random() < self.garbage:
            return self.rng.choice(["%%", "fly", "left", "I will go forward", "", "turn left then go forward"])
        return self.inner.act(messages, env, step, attempt)


def test_babyai_prompts_and_records_match_the_frozen_runner():
    env, checked = BabyAIEnv(), 0
    for level, seed in [("BabyAI-GoToLocal-v0", 1), ("BabyAI-PickupLoc-v0", 4), ("BabyAI-GoToObjMaze-v0", 2)]:
        task = Task("babyai", level, seed)
        makers = [lambda: _Recording(ExpertPolicy()), lambda: _Recording(RandomPolicy(3)),
                  lambda: _Recording(ExpertPolicy(), 0.4),
                  lambda: _Recording(ScriptedPolicy({task.task_id: ["go forward", "xx", "turn left", "pick up"]}), 0.2)]
        for make in makers:
            for cfg in (dict(max_steps=30), dict(max_steps=20, history_window=3, max_retries=1)):
                old_policy, new_policy = make(), make()
                old = reference_runner.run_episode(env, old_policy, task, reference_runner.RunnerConfig(**cfg), "e")
                new = episode.run_episode(env, new_policy, task, episode.RunnerConfig(**cfg), "e")
                assert new_policy.seen == old_policy.seen  # every prompt of every try, byte for byte
                for f in ("success", "claimed_done", "end_reason", "error", "request", "policy"):
                    assert getattr(new, f) == getattr(old, f), f
                assert len(new.steps) == len(old.steps)
                for a, b in zip(old.steps, new.steps):
                    b = dataclasses.asdict(b)
                    assert all(b[k] == v for k, v in dataclasses.asdict(a).items() if k != "latency_s")
                    assert not b["memory"] and not b["tool_calls"] and not b["tool_results"]
                checked += 1
    assert checked == 24


def test_prompt_renderer_output_is_pinned():
    """The exact strings a trained model expects (changing them needs retraining)."""
    assert system_prompt(ACTION_NAMES) == (
        "Reply with one action: turn left, turn right, go forward, pick up, drop, toggle, done.")
    assert user_content("go to the red ball", Turn("facing east, carrying nothing", "blocked"), True) == (
        "go to the red ball\nblocked\nfacing east, carrying nothing")
    assert user_content("m", Turn("s", ""), False) == "s"
    turns = [Turn("s0", "", "go forward"), Turn("s1", "blocked", "turn left"), Turn("s2", "")]
    assert render_messages("m", turns, ["a", "b"], 2) == [
        {"role": "system", "content": "Reply with one action: a, b."}, {"role": "user", "content": "m\ns2"}]
    assert render_training_chunks("m", turns[:2], ["a"], 8) == [[
        {"role": "system", "content": "Reply with one action: a."}, {"role": "user", "content": "m\ns0"},
        {"role": "assistant", "content": "go forward"}, {"role": "user", "content": "blocked\ns1"},
        {"role": "assistant", "content": "turn left"}]]
