"""DPO on real success/failure pairs of the same tasks (bot successes vs random-policy failures)."""
import json

import pytest

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy, RandomPolicy
from data_collection.schema import episode_rows
from data_collection.store import TrajectoryStore
from envs.babyai import BabyAIEnv
from envs.registry import sample_tasks
from training.dpo import DPOConfig, make_pairs, train_dpo


def test_dpo_prefers_the_successful_episode(trained, tmp_path):
    export = trained[0] / "export"
    env = BabyAIEnv()
    store = TrajectoryStore(tmp_path / "pairs")
    good, bad = [], []
    for task in sample_tasks("babyai", ["BabyAI-GoToLocal-v0"], "train", 40, base_seed=9_000_000):
        g = run_episode(env, ExpertPolicy(), task, RunnerConfig(max_steps=16), episode_id=f"g{task.seed}")
        b = run_episode(env, RandomPolicy(seed=3), task, RunnerConfig(max_steps=16), episode_id=f"b{task.seed}")
        if g.success and not b.success:
            good += episode_rows(g)
            bad += episode_rows(b)
    store.write_shard("train", "s", good)
    store.write_shard("failures", "f", bad)
    pairs = make_pairs(good + bad, 100, 0)
    assert len(pairs) >= 15 and all(p[0][0].task_id == p[1][0].task_id for p in pairs)

    summary = train_dpo([str(tmp_path / "pairs")], str(export), str(tmp_path / "dpo"),
                        DPOConfig(lr=5e-4, epochs=3.0, pairs_per_step=4, threads=2), progress=False)
    rows = [json.loads(l) for l in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["dpo_loss"], rows[-1]["dpo_loss"]
    assert last < first, (first, last)
    assert summary["reward_accuracy"] > 0.7
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "dpo" / "export") is not None
