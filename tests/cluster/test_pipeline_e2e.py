"""The whole pipeline, small: real Ray actors, real DeepSpeed, a real HTTP server, real BabyAI."""
import json

import pytest
import yaml

from cluster.config import load_pipeline_config
from cluster.pipeline import run_pipeline
from data_collection.store import TrajectoryStore, group_episodes
from envs.babyai import replay
from eval.metrics import newcombe_diff


def test_pipeline_end_to_end(tmp_path, ray_local):
    cfg_path = tmp_path / "mini.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"),
        "collect": {"episodes": 60, "workers": 2, "shard_episodes": 30},
        "train": {"vocab_size": 400, "epochs": 1.0, "tokens_per_batch": 2048, "warmup_steps": 2,
                  "checkpoint_every": 0, "threads": 2},
        "serve": {"threads": 1, "max_batch_size": 8},
        "eval": {"episodes": 6, "workers": 3, "max_steps": 12},
    }))
    cfg = load_pipeline_config(cfg_path)
    report = run_pipeline(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "report.json").read_text())
    assert set(saved["policies"]) == {"model", "random", "expert"}
    assert saved["policies"]["expert"]["overall"]["success_rate"] == 1.0
    for name in ("model", "random"):
        m = saved["policies"][name]["levels"]["BabyAI-GoToLocal-v0"]
        assert m["episodes"] == 6 and 0.0 <= m["invalid_action_rate"] <= 1.0
    assert "| BabyAI-GoToLocal-v0 | model | 6 |" in (run / "report.md").read_text()
    assert set(saved["stage_wall_s"]) >= {"collect", "train", "eval_imitation", "eval_random", "eval_expert"}
    # every saved evaluation episode replays in plain minigrid to the reported verdict
    for name in ("model", "random", "expert"):
        eps = group_episodes(TrajectoryStore(run / "eval" / name).read_records("episodes"))
        assert len(eps) == 6
        for ep in eps:
            assert ep[0]["split"] == "test"
            assert replay(ep[0]["level"], ep[0]["seed"], [r["action"] for r in ep if r["action"]]) == ep[-1]["episode_success"]
    # a second run resumes: nothing is collected or trained again
    again = run_pipeline(cfg)
    assert again["stage_wall_s"]["collect"] == report["stage_wall_s"]["collect"]


@pytest.mark.slow
def test_pipeline_three_phases_report_each_change(tmp_path, ray_local):
    """imitation -> self_boost -> dpo, small: every phase is evaluated on the same held-out seeds and the
    report states the change from the phase before, with the interval computed from the counts."""
    cfg_path = tmp_path / "phases.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"),
        "phases": ["imitation", "self_boost", "dpo"],
        "collect": {"episodes": 60, "workers": 2, "shard_episodes": 30},
        "train": {"vocab_size": 400, "epochs": 1.0, "tokens_per_batch": 2048, "warmup_steps": 2,
                  "checkpoint_every": 0, "threads": 2},
        # 64 steps at T=1.0: a barely trained model succeeds on ~1 task in 3, so same-task pairs exist
        "self_boost": {"tasks": 16, "trials": 2, "workers": 4, "epochs": 0.5},
        "dpo": {"epochs": 1.0, "pairs_per_step": 2},
        "serve": {"threads": 1, "max_batch_size": 8},
        "eval": {"episodes": 8, "workers": 4, "max_steps": 64, "temperature": 1.0, "baselines": []},
    }))
    run_pipeline(load_pipeline_config(cfg_path))
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    phases = saved["phases"]
    assert list(phases) == ["imitation", "self_boost", "dpo"]
    assert set(saved["policies"]) == {"model-imitation", "model-self_boost", "model-dpo"}
    md = (tmp_path / "run" / "report.md").read_text()
    for prev, cur in (("imitation", "self_boost"), ("self_boost", "dpo")):
        a, b = phases[prev], phases[cur]
        d, (lo, hi) = newcombe_diff(b["successes"], b["episodes"], a["successes"], a["episodes"])
        ch = b["change_vs_previous"]
        assert ch["previous"] == prev and abs(ch["delta"] - d) < 1e-12 and ch["ci95"] == [lo, hi]
        assert f"| {cur} | 8 | " in md and f"{100 * d:+.1f} pp (vs {prev})" in md


def test_pipeline_dagger_phase_learns_the_experts_takeover_steps(tmp_path, ray_local):
    """imitation -> dagger, small: the model starts fresh training tasks, the bot takes over from the state it
    left; the record names who chose each step, the phase trains on the demonstrations plus only the
    expert's steps, and the report states the phase's change on the same held-out seeds."""
    cfg_path = tmp_path / "dagger.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"),
        "phases": ["imitation", "dagger"],
        "collect": {"episodes": 40, "workers": 2, "shard_episodes": 20},
        "train": {"vocab_size": 400, "epochs": 1.0, "tokens_per_batch": 2048, "warmup_steps": 2,
                  "checkpoint_every": 0, "threads": 2},
        "dagger": {"tasks": 12, "max_prefix": 6, "workers": 3, "epochs": 0.5},
        "serve": {"threads": 1, "max_batch_size": 8},
        "eval": {"episodes": 6, "workers": 3, "max_steps": 24, "baselines": []},
    }))
    run_pipeline(load_pipeline_config(cfg_path))
    run = tmp_path / "run"
    saved = json.loads((run / "report.json").read_text())
    assert list(saved["phases"]) == ["imitation", "dagger"]
    assert saved["phases"]["dagger"]["change_vs_previous"]["previous"] == "imitation"
    eps = group_episodes(TrajectoryStore(run / "dagger" / "data").read_records("train"))
    handed = [ep for ep in eps if len({r["policy"] for r in ep}) > 1]
    assert handed, "some episode changed hands"
    expert_steps = 0
    for ep in eps:
        actors = [r["policy"] for r in ep]
        k = actors.count("model")
        assert actors == ["model"] * k + ["expert"] * (len(ep) - k)  # one handover, never back
        assert replay(ep[0]["level"], ep[0]["seed"], [r["action"] for r in ep if r["action"]]) is True
        assert ep[-1]["episode_success"] is True
        # learned: the valid steps of the policy that finished (a model-only success: the model's)
        expert_steps += sum(1 for r in ep if r["action"] and r["policy"] == ep[-1]["policy"])
    demo = sum(1 for _ in TrajectoryStore(run / "data").read_records("train"))
    summary = json.loads((run / "train_dagger" / "summary.json").read_text())
    assert summary["actions_trained"] == demo + expert_steps
