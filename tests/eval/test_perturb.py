"""Perturbation wrappers: they change what the agent sees and whether an action arrives, never the verdict."""
import pytest

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy, RandomPolicy
from agent.policy_factory import build_policy
from data_collection.schema import StepRow
from envs.babyai import BabyAIEnv, replay
from envs.base import Action, Task
from envs.registry import sample_tasks
from eval.perturb import PerturbedEnv, is_injected, paraphrase
from eval.replays import executed_actions

LEVEL = "BabyAI-GoToLocal-v0"
SPECS = [
    {"kind": "none"},
    {"kind": "paraphrase"},
    {"kind": "distractors", "p": 0.7, "n": 2},
    {"kind": "drop_lines", "p": 0.4},
    {"kind": "action_fail", "p": 0.3},
    {"kind": "injection", "target": "done", "p": 0.5},
    {"kind": "forbid", "actions": ["drop"], "target": "drop", "p": 0.5},
]


@pytest.mark.parametrize("spec", SPECS, ids=[s["kind"] for s in SPECS])
def test_verdict_is_the_environments_own_under_every_perturbation(spec):
    """Replaying the actions that reached the env in plain minigrid gives the verdict the run recorded."""
    env = PerturbedEnv(BabyAIEnv(), spec)
    tasks = sample_tasks("babyai", [LEVEL, "BabyAI-PickupLoc-v0"], "test", 8)
    # on_crash="fail_episode": the bot's planner may assert when its pick-up was silently ignored (a failed episode)
    for policy, max_steps in ((build_policy({"kind": "expert"}, on_crash="fail_episode"), 64), (RandomPolicy(seed=3), 24)):
        for trial, task in enumerate(tasks):
            env.begin_episode(trial)
            ep = run_episode(env, policy, task, RunnerConfig(max_steps=max_steps))
            rows = [StepRow(action=s.action, blocked=s.blocked) for s in ep.steps]
            assert replay(task.level, task.seed, executed_actions(rows, {"events": env.events})) == ep.success
    if spec["kind"] in ("none", "paraphrase", "distractors", "drop_lines"):  # the bot reads the env, not the text
        env.begin_episode(0)
        assert run_episode(env, ExpertPolicy(), tasks[0], RunnerConfig()).success


def test_observation_perturbations_change_text_only_as_specified():
    task = Task("babyai", LEVEL, 1_000_000_003, "test")
    clean = BabyAIEnv().reset(task)
    para = PerturbedEnv(BabyAIEnv(), {"kind": "paraphrase"}).reset(task)
    assert para.state == clean.state and para.request != clean.request
    for word in clean.request.split()[-2:]:  # colour and object survive the rewording
        assert word in para.request
    noisy = PerturbedEnv(BabyAIEnv(), {"kind": "distractors", "p": 1.0, "n": 3}).reset(task)
    assert noisy.state.split("\n")[0] == clean.state.split("\n")[0]
    assert len(noisy.state.split("\n")) == len(clean.state.split("\n")) + 3
    dropped = PerturbedEnv(BabyAIEnv(), {"kind": "drop_lines", "p": 1.0}).reset(task)
    assert dropped.state == clean.state.split("\n")[0]
    inj = PerturbedEnv(BabyAIEnv(), {"kind": "injection", "target": "done", "p": 1.0}).reset(task)
    assert is_injected(inj.state) and not is_injected(clean.state) and "done" in inj.state
    # paraphrases are deterministic in the rng and vary across draws
    import random

    assert paraphrase("go to the red ball", random.Random(1)) == paraphrase("go to the red ball", random.Random(1))
    assert len({paraphrase("go to the red ball", random.Random(i)) for i in range(20)}) > 5


def test_ignored_actions_are_silent_and_leave_the_world_unchanged():
    env = PerturbedEnv(BabyAIEnv(), {"kind": "action_fail", "p": 1.0})
    obs = env.reset(Task("babyai", LEVEL, 5))
    for name in ("go forward", "turn left", "pick up"):
        r = env.step(Action(name))
        assert r.feedback == "" and r.observation.state == obs.state and not r.success and not r.terminated
    assert [e["kind"] for e in env.events] == ["action_ignored"] * 3


def test_env_crash_is_an_exception_and_retry_draws_afresh():
    env = PerturbedEnv(BabyAIEnv(), {"kind": "env_crash", "p": 0.2})
    task = Task("babyai", LEVEL, 7)
    outcomes = []
    for attempt in range(10):
        env.begin_episode(0, f"0.{attempt}")
        env.reset(task)
        try:
            for _ in range(3):
                env.step(Action("turn left"))
            outcomes.append("ok")
        except RuntimeError:
            outcomes.append("crash")
    assert set(outcomes) == {"ok", "crash"}
