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


def _ep(task, success, claimed=False, infra=False, steps=3):
    return {"task_id": task, "level": "L", "success": success, "claimed_done": claimed, "steps": steps,
            "attempts": steps, "invalid": 0, "end_reason": "infra_error" if infra else "x", "infra_error": infra,
            "step_latencies": [0.01] * steps}


def test_pass_hat_k_is_tau_bench_formula():
    from eval.metrics import pass_hat_k, pass_k_curve

    assert pass_hat_k(3, 4, 1) == 0.75 and pass_hat_k(3, 4, 2) == 0.5 and pass_hat_k(3, 4, 4) == 0.0
    eps = [_ep("a", s) for s in (1, 1, 1, 0)] + [_ep("b", s) for s in (1, 1, 1, 1)]
    curve = pass_k_curve(eps)
    assert list(curve) == ["1", "2", "3", "4"]
    assert curve["1"]["value"] == (0.75 + 1) / 2 and curve["2"]["value"] == (0.5 + 1) / 2
    assert curve["4"]["value"] == 0.5 and curve["4"]["ci95"][0] <= 0.5 <= curve["4"]["ci95"][1]


def test_infrastructure_errors_are_counted_apart_from_agent_outcomes():
    eps = [_ep("a", True), _ep("b", False, claimed=True), _ep("c", False), _ep("d", False, infra=True)]
    m = summarize(eps)
    assert m["episodes"] == 3 and m["episodes_total"] == 4 and m["infra_errors"] == 1
    assert m["success_rate"] == 1 / 3 and m["failures"] == 2
    assert m["false_success_rate"]["value"] == 1 / 3 and m["false_success_of_failures"]["value"] == 1 / 2
    # status: a (reached goal) and c (no claim, failed) are judged right, b (claimed, failed) wrong
    assert m["status_accuracy"] == 2 / 3
    assert m["confusion"]["claimed_done"] == {"verified": 0, "failed": 1}


def test_newcombe_interval_for_a_change_in_success():
    from eval.metrics import newcombe_diff

    d, (lo, hi) = newcombe_diff(40, 100, 60, 100)
    assert abs(d + 0.2) < 1e-12 and lo < -0.2 < hi < 0  # a clear drop
    d, (lo, hi) = newcombe_diff(5, 10, 5, 10)
    assert d == 0 and lo < 0 < hi
