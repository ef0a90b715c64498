"""Environment registry: families, their levels, and disjoint train/test seed splits.

A family plugs in with `register_env(name, spec_fn)`, where `spec_fn()` returns an `EnvSpec`
(imported lazily, so a family whose package is missing costs nothing until it is used). The
collector, the evaluator and the CLI only ever talk to `EnvSpec`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from envs.base import Environment, Task
from envs.splits import TEST_SEEDS, TRAIN_SEEDS, seed_range  # noqa: F401  (re-exported)



@dataclass(frozen=True)
class EnvSpec:
    name: str
    levels: tuple[str, ...]  # task families the user names with --levels / --tasks
    factory: Callable[[], Environment]
    # Levels whose expert can hang: collecting them needs a per-episode time limit.
    needs_time_limit: frozenset[str] = frozenset()
    # Per-episode wall-clock limit used when the user gives none (None: no limit).
    default_time_limit_s: float | None = None
    # Mission variants: kind -> (base level -> variant level name, or None where not offered).
    variants: dict[str, Callable[[str], str | None]] = field(default_factory=dict)
    # Provenance of the built-in expert, e.g. "BabyAIBot (minigrid 3.2.0)"; goes into `model`.
    expert_version: str = ""
    # The world is deterministic in (level, seed, actions), so re-running an episode's recorded
    # actions rebuilds it and must reach the same verdict (`lam eval --replay`). False: replay says it cannot.
    replayable: bool = False
    # Optional replayer in the world's own engine, without the agent: (level, seed, actions) -> verdict.
    replay: Callable[[str, int, list[str]], bool] | None = None

    def check_levels(self, levels: list[str]) -> None:
        for level in levels:
            if level not in self.levels:
                shown = ", ".join(self.levels[:8])
                raise ValueError(
                    f"unknown level {level!r} for env {self.name!r}; known ({len(self.levels)}): {shown}, ... "
                    f"(list them all with `lam collect --env {self.name} --list-levels`)"
                )

    def with_variants(self, levels: list[str], kinds: list[str]) -> list[str]:
        """levels plus, for each kind, the variant of each level where the family offers one."""
        out = list(levels)
        for kind in kinds:
            if kind not in self.variants:
                known = ", ".join(self.variants) or "none"
                raise ValueError(f"unknown variant {kind!r} for env {self.name!r}; known: {known}")
            out += [v for v in (self.variants[kind](lvl) for lvl in levels) if v and v not in out]
        return out


def task_at(env: str, levels: list[str], split: str, index: int, base_seed: int = 0) -> Task:
    """Task number `index` of the stream (levels cycled, one fresh seed per index). Collection
    draws indices 0, 1, 2, ... until it has enough verified episodes."""
    lo, hi = seed_range(split)
    seed = lo + base_seed + index
    if not lo <= seed < hi:
        raise ValueError(f"seed {seed} is outside the {split} split [{lo}, {hi})")
    return Task(env=env, level=levels[index % len(levels)], seed=seed, split=split)


def sample_tasks(env: str, levels: list[str], split: str, n: int, base_seed: int = 0) -> list[Task]:
    """n tasks cycling over levels; seeds are deterministic in (split, base_seed, index)."""
    get_env_spec(env).check_levels(levels)
    return [task_at(env, levels, split, i, base_seed) for i in range(n)]


def _babyai_spec() -> EnvSpec:
    import minigrid

    from envs.babyai import BABYAI_LEVELS, BOT_NEEDS_TIME_LIMIT, DEFAULT_TIME_LIMIT_S, BabyAIEnv, replay
    from envs.babyai_variants import VARIANT_KINDS, variant_name, variant_origin

    def variant(kind: str) -> Callable[[str], str | None]:
        return lambda level: (name if (name := variant_name(level, kind)) in BABYAI_LEVELS else None)

    return EnvSpec(
        name="babyai",
        levels=BABYAI_LEVELS,
        factory=BabyAIEnv,
        needs_time_limit=frozenset(lvl for lvl in BABYAI_LEVELS if variant_origin(lvl)[0] in BOT_NEEDS_TIME_LIMIT),
        default_time_limit_s=DEFAULT_TIME_LIMIT_S,
        variants={k: variant(k) for k in VARIANT_KINDS},
        expert_version=f"BabyAIBot (minigrid {minigrid.__version__})",
        replayable=True,
        replay=replay,  # plain minigrid: an independent check of the recorded verdict
    )


def _bfcl_spec() -> EnvSpec:
    from envs.bfcl import BfclEnv
    from envs.bfcl_data import CATEGORIES, VERSION

    return EnvSpec(name="bfcl", levels=CATEGORIES, factory=BfclEnv, expert_version=f"gold calls (bfcl-eval {VERSION})",
                   replayable=True)


def _toolworld_spec() -> EnvSpec:
    from envs.bfcl_data import VERSION
    from envs.toolworld import LEVEL_NAMES, ToolWorldEnv

    return EnvSpec(name="toolworld", levels=LEVEL_NAMES, factory=ToolWorldEnv,
                   expert_version=f"toolworld planner (bfcl-eval {VERSION} backends)", replayable=True)


_SPECS: dict[str, Callable[[], EnvSpec]] = {"babyai": _babyai_spec, "bfcl": _bfcl_spec, "toolworld": _toolworld_spec}


def register_env(name: str, spec_fn: Callable[[], EnvSpec]) -> None:
    """Plug in an environment family; `spec_fn` is called (once) the first time it is used."""
    _SPECS[name] = spec_fn
    get_env_spec.cache_clear()


def list_envs() -> list[str]:
    return sorted(_SPECS)


@lru_cache(maxsize=None)
def get_env_spec(name: str) -> EnvSpec:
    if name not in _SPECS:
        raise ValueError(f"unknown environment {name!r}; known: {', '.join(list_envs())}")
    return _SPECS[name]()


def make_env(name: str) -> Environment:
    return get_env_spec(name).factory()
