"""Small real runs for the `lam view` and console tests, made in this process without Ray (seconds)."""
from __future__ import annotations

from pathlib import Path


def planted_eval_run(out: Path, episodes: int = 8) -> Path:
    """`lam eval` with the prefix-expert (plays the bot for a random prefix, then claims done): a plain
    evaluation run whose false successes are planted, verdicts by minigrid. Episodes in out/prefix-expert."""
    from cluster.cli import main

    rc = main(["eval", "--policy", "prefix-expert", "--workers", "0", "--episodes", str(episodes), "--out", str(out)])
    assert rc == 0
    return out


def bot_dataset(out: Path, episodes: int = 3) -> Path:
    """A dataset collected by the BabyAI bot in this process (train/ only)."""
    from data_collection.collector import CollectConfig, collect

    collect(CollectConfig(episodes=episodes, workers=0, out=str(out), shard_episodes=episodes), progress=False)
    return out
