"""Environment registry: families, their levels, and disjoint train/test seed splits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from envs.base import Environment, Task

# Seeds are split by range so a held-out test seed can never appear in collection.
TRAIN_SEEDS = (0, 1_000_000_000)
TEST_SEEDS = (1_000_000_000, 2_000_000_000)


@dataclass(frozen=True)
class EnvSpec:
    name: str
    levels: tuple[str, ...]
    factory: Callable[[], Environment]


def seed_range(split: str) -> tuple[int, int]:
    if split == "train":
        return TRAIN_SEEDS
    if split == "test":
        return TEST_SEEDS
    raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")


def sample_tasks(env: str, levels: list[str], split: str, n: int, base_seed: int = 0) -> list[Task]:
    """n tasks cycling over levels; seeds are deterministic in (split, base_seed, index)."""
    spec = get_env_spec(env)
    for level in levels:
        if level not in spec.levels:
            raise ValueError(f"unknown level {level!r} for env {env!r}; known: {', '.join(spec.levels)}")
    lo, _ = seed_range(split)
    return [Task(env=env, level=levels[i % len(levels)], seed=lo + base_seed + i, split=split) for i in range(n)]


def _babyai_spec() -> EnvSpec:
    from envs.babyai import BABYAI_LEVELS, BabyAIEnv

    return EnvSpec(name="babyai", levels=BABYAI_LEVELS, factory=BabyAIEnv)


_SPECS: dict[str, Callable[[], EnvSpec]] = {"babyai": _babyai_spec}


def list_envs() -> list[str]:
    return sorted(_SPECS)


def get_env_spec(name: str) -> EnvSpec:
    if name not in _SPECS:
        raise ValueError(f"unknown environment {name!r}; known: {', '.join(list_envs())}")
    return _SPECS[name]()


def make_env(name: str) -> Environment:
    return get_env_spec(name).factory()
