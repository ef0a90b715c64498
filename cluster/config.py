"""Typed configs that mirror `configs/*.yaml` one to one. Unknown keys are errors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from data_collection.collect_config import CollectConfig, known_env
from data_collection.overrides import apply_overrides, read_yaml
from training.dpo import DPOConfig
from training.rl import RLConfig
from training.train import TrainConfig


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line naming the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RayConfig(_Strict):
    # Ray address to join ("auto", "ray://host:10001"); null starts a private local cluster on 127.0.0.1
    address: str | None = None
    num_cpus: int | None = None


# The pipeline's collection defaults where they differ from CollectConfig's (the Python API's): a larger
# dataset in full shards, and limits that stop the BabyAI bot looping. Unchanged since the pipeline had
# its own section class; `lam collect` keeps its flags' defaults (max_steps and time limit: the env's).
PIPELINE_COLLECT = {"episodes": 5000, "shard_episodes": 500, "max_steps": 64, "time_limit_s": 10.0}
# (collect.out is not one: the pipeline collects into run_dir/data.) The keys of `collect:` before it was the collector's own config: the stage digest always covers them,
# the collector's other keys (policy, variants, ...) only when set, so finished runs keep their digest
PIPELINE_COLLECT_KEYS = ("env", "levels", "episodes", "workers", "shard_episodes", "max_steps", "time_limit_s",
                         "base_seed")


class ServeSection(_Strict):
    backend: str = "transformers"  # transformers | vllm | auto
    port: int = 0  # 0: pick a free port on 127.0.0.1
    threads: int = 2
    max_batch_size: int = 32
    prefill_thread: Literal["auto", "on", "off"] = "auto"  # embedded backend: `lam serve --prefill-thread`
    packed_prefill: Literal["auto", "off"] = "auto"  # embedded backend: `lam serve --packed-prefill`
    replicas: int | Literal["auto"] = "auto"  # embedded backend: `lam serve --replicas`
    # largest max_tokens a request may ask (`lam serve --max-new-tokens`): the agent asks 512 for a
    # tool call (JSON arguments), 16 for a text action
    max_new_tokens: int = Field(512, gt=0)


class ExtraEval(_Strict):
    """The final model evaluated on another environment too (e.g. BFCL for a tool-world model)."""
    env: str
    levels: list[str]
    episodes: int = Field(20, gt=0)  # per level, test split
    max_steps: int | None = Field(None, gt=0)  # null: eval.max_steps
    base_seed: int = 0

    @field_validator("env")
    @classmethod
    def _env_known(cls, v: str) -> str:
        return known_env(v)


class EvalSection(_Strict):
    levels: list[str] = ["BabyAI-GoToLocal-v0"]
    episodes: int = Field(200, gt=0)  # per level, held-out test seeds
    max_steps: int = Field(64, gt=0)
    workers: int = Field(8, gt=0)  # agent actors sharing the model server
    # sampled, as `lam eval` does by default: greedy policies loop when the target is out of view
    temperature: float = Field(0.7, ge=0.0)
    max_retries: int = Field(2, ge=0)
    baselines: list[str] = ["random", "expert"]
    base_seed: int = 0
    # other environments the final model is also evaluated on (no baselines there), reported beside
    also: list[ExtraEval] = []


class SelfBoostSection(_Strict):
    # train-split tasks the imitation model attempts; its environment-verified successes are added
    tasks: int = Field(1000, gt=0)
    # attempts per task at `temperature` (2+ gives success/failure pairs on the same task for DPO)
    trials: int = Field(2, gt=0)
    temperature: float = Field(1.0, ge=0.0)
    workers: int = Field(16, gt=0)
    # continued SFT on expert + self-generated successes
    epochs: float = 1.0
    lr: float = 1e-3
    base_seed: int = 50_000_000  # fresh train-split seeds, none used by the expert collection


class DaggerSection(_Strict):
    # train-split tasks the model starts; the expert takes over from the state the model left after a random
    # 0..max_prefix of its steps (DAgger's labels on the model's own states: agent/policies.py TakeoverPolicy)
    tasks: int = Field(2000, gt=0)
    max_prefix: int = Field(40, ge=0)
    temperature: float = Field(0.7, ge=0.0)  # the model's sampling in its prefix (eval's, by default)
    workers: int = Field(16, gt=0)
    # continued SFT on the expert demonstrations + the expert's takeover steps (the model's steps are context)
    epochs: float = 1.0
    lr: float = 1e-3
    base_seed: int = 60_000_000  # fresh train-split seeds, none used by collection or self-boosting


class PipelineConfig(_Strict):
    run_dir: str = "runs/quickstart"
    seed: int = 0
    ray: RayConfig = RayConfig()
    collect: CollectConfig = CollectConfig(**PIPELINE_COLLECT)
    train: TrainConfig = TrainConfig()
    serve: ServeSection = ServeSection()
    eval: EvalSection = EvalSection()
    # training phases in order: imitation, then optionally dagger (the expert's corrections on the model's own
    # states), self_boost (rejection-sampling SFT), dpo and rl
    phases: list[str] = ["imitation"]
    dagger: DaggerSection = DaggerSection()
    self_boost: SelfBoostSection = SelfBoostSection()
    dpo: DPOConfig = DPOConfig()
    # online RL (training/rl.py): env, levels and the runner's limits come from collect/eval/train unless set here
    rl: RLConfig = RLConfig()

    @field_validator("collect", mode="before")
    @classmethod
    def _collect_defaults(cls, v):
        return {**PIPELINE_COLLECT, **v} if isinstance(v, dict) else v

    @field_validator("phases")
    @classmethod
    def _phases_known(cls, v: list[str]) -> list[str]:
        known = ["imitation", "dagger", "self_boost", "dpo", "rl"]
        for p in v:
            if p not in known:
                raise ValueError(f"unknown phase {p!r}; known: {', '.join(known)}")
        if not v or v[0] != "imitation":
            raise ValueError("phases must start with 'imitation'")
        if "dpo" in v and "self_boost" not in v:
            raise ValueError("'dpo' needs 'self_boost' first: it learns from the model's own success/failure pairs")
        if "rl" in v and v[-1] != "rl":
            raise ValueError("'rl' is the last phase: it starts from the model every other phase produced")
        if sorted(v, key=known.index) != v or len(set(v)) != len(v):
            raise ValueError(f"phases run once each, in the order {' -> '.join(known)}; got {' -> '.join(v)}")
        return v

    def check_levels(self) -> None:
        from envs.registry import get_env_spec

        known = get_env_spec(self.collect.env).levels
        for where, levels in (("collect.levels", self.collect.levels), ("eval.levels", self.eval.levels)):
            for lvl in levels:
                if lvl not in known:
                    raise ConfigError(f"{where}: unknown level {lvl!r} for env {self.collect.env!r}")
        for i, x in enumerate(self.eval.also):
            for lvl in x.levels:
                if lvl not in get_env_spec(x.env).levels:
                    raise ConfigError(f"eval.also[{i}].levels: unknown level {lvl!r} for env {x.env!r}")


def _one_line(e: ValidationError, path: str) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown key {where!r}"
    return f"{path}: {where}: {err['msg']}"


def load_pipeline_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    raw = read_yaml(path, error=ConfigError)
    apply_overrides(raw, overrides or [], form="section.key=value", error=ConfigError)
    try:
        cfg = PipelineConfig(**raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e, str(path))) from e
    cfg.check_levels()
    return cfg


def ensure_writable(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"run_dir {p} is not writable: {e.strerror or e}") from e
    if not os.access(p, os.W_OK):
        raise ConfigError(f"run_dir {p} is not writable")
    return p
