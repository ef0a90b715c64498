"""DAgger data (agent/policies.py TakeoverPolicy): the model's prefix, then the expert from the state it
left; the record names who chose each step, and training learns only the expert's steps of such an episode."""
from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy, RandomPolicy, TakeoverPolicy
from agent.policy_factory import build_policy
from data_collection.schema import episode_rows
from envs.babyai import BabyAIEnv
from envs.base import Task
from training.samples import episode_conversations

LEVEL = "BabyAI-GoToLocal-v0"


def _episode(policy, seed: int):
    ep = run_episode(BabyAIEnv(), policy, Task("babyai", LEVEL, seed, "train"), RunnerConfig(max_steps=64))
    return ep, episode_rows(ep, model="test")


def test_takeover_hands_over_once_and_only_the_experts_steps_are_learned():
    handed = 0
    for seed in range(40):
        policy = TakeoverPolicy(RandomPolicy(seed=seed), seed=seed, max_prefix=10)
        ep, rows = _episode(policy, seed)
        k = min(policy.prefix, len(rows))
        actors = [r.policy for r in rows]
        assert actors == ["random"] * k + ["expert"] * (len(rows) - k), (seed, policy.prefix, actors)
        if k == len(rows):  # the prefix outlived the episode: one actor, an ordinary episode
            continue
        assert ep.success, f"the bot finishes from wherever the prefix left it (seed {seed}, prefix {k})"
        convs = episode_conversations([rows])
        learned = [c.messages[i]["content"] for c in convs for i in c.labeled]
        assert learned == [r.action for r in rows[k:]]
        # the random steps stay, unlearned, in the conversation the expert's first step saw (all of its
        # history window; none where that step opens a new window)
        seen = [m["content"] for m in rows[k].chat_messages() if m["role"] == "assistant"]
        assert seen == [r.action for r in rows[k - len(seen):k]]
        handed += bool(seen)
    assert handed >= 10


def test_an_episode_of_one_policy_learns_every_valid_step_as_before():
    _, rows = _episode(ExpertPolicy(), 3)
    assert {r.policy for r in rows} == {"expert"}
    convs = episode_conversations([rows])
    assert sum(len(c.labeled) for c in convs) == len(rows)


def test_the_factory_builds_a_takeover_of_a_served_model_and_refuses_one_without_a_url():
    import pytest

    p = build_policy({"kind": "takeover", "base_url": "http://127.0.0.1:9/v1", "model": "m", "max_prefix": 7})
    assert isinstance(p, TakeoverPolicy) and p.model.name == "model" and p._max_prefix == 7
    with pytest.raises(KeyError):
        build_policy({"kind": "takeover", "model": "m"})


def test_the_pipeline_plans_dagger_after_imitation_and_refuses_it_out_of_order():
    import pytest
    from pydantic import ValidationError

    from cluster.config import PipelineConfig, load_pipeline_config
    from cluster.pipeline import stage_plan

    cfg = load_pipeline_config("configs/recipe.yaml", ["phases=[imitation,dagger,self_boost,dpo]"])
    plan = list(stage_plan(cfg))
    assert plan[plan.index("eval_imitation") + 1:][:3] == ["dagger_attempts", "dagger_train", "eval_dagger"]
    assert stage_plan(cfg)["self_boost_train"]["after"] == ["collect", "dagger_attempts", "self_boost_attempts",
                                                             "dagger_train"]
    with pytest.raises(ValidationError, match="in the order imitation -> dagger"):
        PipelineConfig(phases=["imitation", "self_boost", "dagger"])


def test_lam_collect_takeover_refuses_a_dead_endpoint_in_one_line_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ds"
    p = subprocess.run([sys.executable, "-m", "cluster.cli", "collect", "--policy", "takeover", "--model-url",
                        "http://127.0.0.1:9/v1", "--out", str(out), "--workers", "0", "--episodes", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "unreachable" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not out.exists()
    p = subprocess.run([sys.executable, "-m", "cluster.cli", "collect", "--policy", "takeover", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "needs --model-url" in p.stderr and "Traceback" not in p.stderr
