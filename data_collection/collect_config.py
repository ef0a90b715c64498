"""What a collection collects, and how: the collect stage's one config.

    lam collect --episodes 5000 --out runs/data ...        (data_collection/cli.py fills it from its flags)
    lam pipeline --config configs/quickstart.yaml          (its `collect:` section, composed by cluster/config.py)
    collect(CollectConfig(episodes=100, workers=0, out="runs/data"))

Each entry point states its own defaults where they differ from these (the Python API's):
`lam collect` its flags' (shard_episodes 500), the pipeline cluster/config.py's PIPELINE_COLLECT.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


def known_env(v: str) -> str:
    from envs.registry import list_envs

    if v not in list_envs():
        raise ValueError(f"unknown env {v!r}; known: {', '.join(list_envs())}")
    return v


class CollectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # environment family (envs/registry.py)
    env: str = "babyai"
    # levels (task families) of the env to collect on; train-split seeds only
    levels: list[str] = ["BabyAI-GoToLocal-v0"]
    # N: unique environment-verified successes in train/
    episodes: int = Field(1000, gt=0)
    # Ray collector actors; 0 runs in this process without Ray
    workers: int = Field(2, ge=0)
    # tasks per actor batch = at most this many episodes per shard
    shard_episodes: int = Field(250, gt=0)
    # per episode; None or 0: the environment's own step limit
    max_steps: int | None = Field(None, ge=0)
    # per-episode wall clock (the BabyAI bot loops forever on some seeds); None: the env family's default; 0: none
    time_limit_s: float | None = None
    base_seed: int = 0
    # the dataset directory: train/, failures/, manifest.json, README.md (the card)
    out: str = "runs/data"
    # {"kind": "expert"} | {"kind": "random", "seed": 0} | {"kind": "gold", "path": ...} | {"kind": "model", ...}
    policy: dict = {"kind": "expert"}
    split: str = "train"
    # mission variants added per level (paraphrase, then, after, and)
    variants: list[str] = []
    # give up after this many tasks (None: 20 N + 1000)
    max_attempts: int | None = None
    # batches in flight per actor, so an actor never waits for the driver
    depth: int = Field(2, gt=0)

    @field_validator("env")
    @classmethod
    def _env_known(cls, v: str) -> str:
        return known_env(v)
