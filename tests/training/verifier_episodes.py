"""Real tool-world episodes for the verifier tests, and a tiny verifier trained on them (cached per session).

Expert episodes (verified successes), experts that skip their last call and reply "Done." (planted
false successes one call short: the hard case), prefix-experts that reply "Done." after a partial call
sequence, and random callers, on L1 and L2 train-split tasks: all run by the one
episode runner and stored as `lam eval` stores them (episodes/).
"""
from __future__ import annotations

from pathlib import Path

from agent.episode import RunnerConfig, run_episode
from agent.policy_factory import build_policy
from data_collection.schema import episode_rows
from data_collection.store import TrajectoryStore
from envs.registry import make_env, sample_tasks

LEVELS = ["L1", "L2"]


def write_episodes(root: Path, policy: dict, n: int, base_seed: int = 0) -> Path:
    env, rows = make_env("toolworld"), []
    for task in sample_tasks("toolworld", LEVELS, "train", n, base_seed=base_seed):
        ep = run_episode(env, build_policy(policy), task, RunnerConfig(max_steps=8),
                         episode_id=f"{policy['kind']}-{task.level}-{task.seed}")
        rows += episode_rows(ep)
    TrajectoryStore(root).write_shard("episodes", "chunk-00000", rows)
    return root


def toolworld_dirs(base: Path, n: int = 240) -> list[str]:
    # Without the skip-last episodes a verifier this small learns "no call yet" and misses one call short
    # (measured: 21 of 40 such sessions flagged at n=120 with prefix-experts only, 37 of 40 with them).
    skip_last = {"kind": "expert", "plant": {"fault": "skip_last", "rate": 1.0}}
    return [str(write_episodes(base / "expert", {"kind": "expert"}, n)),
            str(write_episodes(base / "skip-last", skip_last, n)),
            str(write_episodes(base / "prefix", {"kind": "prefix-expert", "seed": 1, "max_prefix": 2}, n)),
            str(write_episodes(base / "random", {"kind": "random", "seed": 0}, n // 4))]


TINY = ["max_len=128", "head_tokens=32", "epochs=12", "lr=3e-3", "vocab_size=512", "test_fraction=0.25",
        "val_fraction=0.15", "threads=2"]


def tiny_verifier(base: Path) -> Path:
    """OUT of `lam train-verifier` on the episodes above (trained once per pytest session)."""
    out = base / "verifier"
    if not (out / "best" / "verifier.json").exists():
        from cluster.cli import main

        data = toolworld_dirs(base / "episodes")
        assert main(["train-verifier", "--data", ",".join(data), "--out", str(out), "--json", *TINY]) == 0
    return out
