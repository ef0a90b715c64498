import random

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy, ScriptedPolicy
from data_collection.schema import episode_rows
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
        records += episode_rows(run_episode(env, ScriptedPolicy(script), task, RunnerConfig()))
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


# issue 21 item 12
def test_mean_steps_interval_stays_within_what_steps_can_be():
    # nine short episodes and one at the step limit: mean +- 1.96 SE would go below zero
    eps = [_ep(t, True, steps=1) for t in "abcdefghi"] + [_ep("j", False, steps=64)]
    m = summarize(eps)
    lo, hi = m["steps_ci95"]
    assert 1 <= lo <= m["mean_steps"] <= hi <= 64
    assert summarize(eps)["steps_ci95"] == [lo, hi]  # fixed seed: a rebuilt report has the same interval


# issue 21 item 12
def test_zero_episodes_read_no_episodes_and_one_trial_has_no_pass_k_plot(tmp_path):
    from eval import plots
    from eval.metrics import latency_histogram, pass_k_curve, per_level
    from eval.report import metric_rows, write_report

    def variant(eps):
        return {"perturbation": {"kind": "none"}, "overall": summarize(eps), "levels": per_level(eps),
                "pass_k": pass_k_curve([e for e in eps if not e["infra_error"]]), "latency_hist": latency_histogram(eps),
                "run": {"episodes_run": len(eps), "wall_s": 1.0, "episodes_per_s": 1.0, "actor_deaths": 0}}

    lost = [_ep("a", False, infra=True), _ep("b", False, infra=True)]
    report = {"suite": "success", "config": {}, "skipped": {}, "effects": {},
              "variants": {"clean": variant([_ep("a", True), _ep("b", False)]), "down": variant(lost)}}
    rows = dict(metric_rows(report, "down"))
    assert rows["success [95% CI]"] == "no episodes (2 infrastructure errors)"
    assert rows["mean steps [95% CI]"] == "—" and rows["status accuracy [95% CI]"] == "—"
    assert "0.0%" not in "".join(rows.values())
    write_report(tmp_path, {"model": {"levels": per_level(lost), "overall": summarize(lost)}}, {}, {})
    assert "| L | model | 0 | no episodes (2 infrastructure errors) | — |" in (tmp_path / "report.md").read_text()
    # one trial per task: pass^1 is the success rate; no curve is drawn, and the report says why
    assert plots.pass_k(report) is None
    assert "one trial per task" in plots.pass_k_skip_reason(report)
