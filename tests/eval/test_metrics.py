import random

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy, ScriptedPolicy
from data_collection.schema import episode_to_records
from envs.babyai import BabyAIEnv
from envs.registry import sample_tasks
from eval.metrics import episode_summaries, summarize, wilson


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson(55, 100)
    assert lo < 0.55 < hi and 0.44 < lo and hi < 0.65
    assert wilson(0, 0) == (0.0, 0.0)


def test_planted_false_successes_are_recovered_exactly():
    """Expert for a random prefix, then claim done: truth computed independently by replay."""
    env = BabyAIEnv()
    rng = random.Random(7)
    tasks = sample_tasks("babyai", ["BabyAI-GoToLocal-v0"], "test", 40)
    script, truth_false = {}, 0
    for task in tasks:
        full = [s.action for s in run_episode(env, ExpertPolicy(), task, RunnerConfig()).steps]
        cut = rng.randint(0, len(full))
        script[task.task_id] = full[:cut]
        truth_false += cut < len(full)  # stopping before the bot's last action cannot be a success
    records = []
    for task in tasks:
        records += episode_to_records(run_episode(env, ScriptedPolicy(script), task, RunnerConfig()))
    m = summarize(episode_summaries(records))
    assert m["false_success"] == truth_false > 0
    assert m["success_rate"] == (40 - truth_false) / 40
    assert m["claimed_done"] == truth_false  # a full replay ends in success before it can claim
