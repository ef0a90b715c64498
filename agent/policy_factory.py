"""The one policy factory: a typed `PolicySpec` (or its dict form, as configs and the HTTP API give it)
in, a policy behind the agent's `Policy` interface out. Collection, evaluation, the agent API and the
benches all build their policies here.

    build_policy({"kind": "expert"})                                  the environment's expert
    build_policy({"kind": "random", "seed": 0})                       the floor
    build_policy({"kind": "prefix-expert", "seed": 0, "max_prefix": 12})
    build_policy({"kind": "expert", "plant": {"fault": "skip_last", "rate": 0.3}})   planted false claims (agent/planted.py)
    build_policy({"kind": "faulty-expert", "p_invalid": 0.3, "p_unsafe": 0.3})    garbled outputs, a stray rm
    build_policy({"kind": "model", "base_url": URL, "model": NAME, "temperature": 0.0, "retries": 3})
    build_policy({"kind": "takeover", "base_url": URL, "model": NAME, "temperature": 1.0, "max_prefix": 40})
                                                 the model for a random prefix, then the expert (DAgger data)
    build_policy(PolicySpec(kind="scripted", script={task_id: [outputs]}))   replay (sessions, gold data)
    build_policy(spec, on_crash="fail_episode")                        evaluation's crash handling

What a policy that raises does is the caller's choice (`on_crash`), because the two users want
opposite things: collection ("raise") turns an expert's crash into PolicyError, so the episode
ends as a labelled policy_error failure; evaluation ("fail_episode") lets the crashed policy output
nothing for the rest of its episode, which the runner counts as invalid actions until the step
limit. PolicyError (model server unreachable) and the episode's time limit always pass through.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from agent.planted import FaultyExpertPolicy, PlantedFaultPolicy
from agent.policies import (EpisodeTimeout, ExpertPolicy, ModelPolicy, PolicyError, PrefixExpertPolicy, RandomPolicy,
                            ScriptedPolicy, TakeoverPolicy)

KINDS = ("expert", "random", "prefix-expert", "model", "scripted", "faulty-expert", "takeover")
OnCrash = Literal["raise", "fail_episode"] | None


@dataclass(frozen=True)
class PolicySpec:
    kind: str = "expert"
    # random and prefix-expert draws; a model's sampling seed
    seed: int = 0
    # prefix-expert, takeover: up to this many steps (random, the model's) before the expert takes over
    max_prefix: int = 12
    # model: an OpenAI-compatible endpoint and the model it serves
    base_url: str = ""
    model: str = ""
    temperature: float = 0.0
    max_tokens: int = 16
    tool_max_tokens: int = 512
    timeout_s: float = 60.0
    retries: int = 3
    api_key: str | None = None  # None: $LAM_API_KEY, else "EMPTY"
    # scripted: task_id -> the outputs to replay, in order
    script: dict = field(default_factory=dict, hash=False)
    # expert: {"fault": "early_done" | "skip_last", "rate": r}: false claims of done planted in a share r
    plant: dict = field(default_factory=dict, hash=False)
    # faulty-expert: chance of a garbled output, and per episode of one stray destructive action
    p_invalid: float = 0.3
    p_unsafe: float = 0.3

    @classmethod
    def from_dict(cls, spec: dict) -> PolicySpec:
        """The dict form; keys of other layers (a gold path, connect_timeout_s) are not the policy's."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in spec.items() if k in known})


def model_spec(base_url: str, model: str, temperature: float, seed: int, api_key: str | None = None,
               timeout_s: float | None = None) -> dict:
    """The policy spec of a served model as the command lines (`lam collect`, `lam eval`) build it from
    their flags; optional fields only when given, so specs (and eval fingerprints) stay as they were."""
    spec = {"kind": "model", "base_url": base_url, "model": model, "temperature": temperature, "seed": seed}
    if timeout_s:
        spec["timeout_s"] = timeout_s
    if api_key:
        spec["api_key"] = api_key
    return spec


def build_policy(spec: PolicySpec | dict, *, on_crash: OnCrash = None):
    s = spec if isinstance(spec, PolicySpec) else PolicySpec.from_dict(spec)
    policy = _bare(s)
    if on_crash == "raise":
        return RaiseOnCrash(policy)
    if on_crash == "fail_episode":
        return FailEpisodeOnCrash(policy)
    return policy


def _bare(s: PolicySpec):
    if s.plant:
        if s.kind != "expert":
            raise ValueError(f"planted faults play the environment's expert: policy kind 'expert', not {s.kind!r}")
        return PlantedFaultPolicy(str(s.plant.get("fault")), float(s.plant.get("rate", 0.3)), seed=int(s.seed))
    if s.kind == "expert":
        return ExpertPolicy()
    if s.kind == "faulty-expert":
        return FaultyExpertPolicy(seed=int(s.seed), p_invalid=float(s.p_invalid), p_unsafe=float(s.p_unsafe))
    if s.kind == "random":
        return RandomPolicy(seed=int(s.seed))
    if s.kind == "prefix-expert":
        return PrefixExpertPolicy(seed=int(s.seed), max_prefix=int(s.max_prefix))
    if s.kind == "scripted":
        return ScriptedPolicy(s.script)
    if s.kind in ("model", "takeover"):
        if not s.base_url or not s.model:
            raise KeyError("base_url" if not s.base_url else "model")
        if s.kind == "takeover":
            return TakeoverPolicy(_bare(replace(s, kind="model")), seed=int(s.seed), max_prefix=int(s.max_prefix))
        return ModelPolicy(base_url=s.base_url, model=s.model, temperature=float(s.temperature),
                           max_tokens=int(s.max_tokens), seed=int(s.seed), timeout_s=float(s.timeout_s),
                           retries=int(s.retries), api_key=s.api_key or os.environ.get("LAM_API_KEY", "EMPTY"),
                           tool_max_tokens=int(s.tool_max_tokens))
    raise ValueError(f"unknown policy kind {s.kind!r}: expected expert, random, prefix-expert, faulty-expert, model "
                     "or takeover")


class _Guarded:
    def __init__(self, inner) -> None:
        self.inner = self.policy = inner  # `policy`: the name evaluation code and tests have used
        self.name = inner.name

    @property
    def usage(self) -> dict:
        return getattr(self.inner, "usage", {})

    @property
    def actor(self) -> str:
        """Who chose the step just taken, where the inner policy hands over (TakeoverPolicy); else ""."""
        return getattr(self.inner, "actor", "")

    @property
    def planted(self) -> bool | None:
        """A planted false claim in this episode (agent/planted.py); None for policies that plant none."""
        return getattr(self.inner, "planted", None)


class RaiseOnCrash(_Guarded):
    """on_crash="raise": a crash ends the episode as a labelled failure (end_reason "policy_error", the
    reason in `error`) instead of killing the collector: the BabyAI bot raises on some seeds
    (BotStuck, DisappearedBoxError, assertion errors in its planner)."""

    def begin(self, env, task) -> None:
        self._guard(self.inner.begin, env, task)

    def act(self, messages, env, step, attempt):
        return self._guard(self.inner.act, messages, env, step, attempt)

    @staticmethod
    def _guard(fn, *args):
        try:
            return fn(*args)
        except (EpisodeTimeout, PolicyError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise PolicyError(f"expert failed: {type(e).__name__}: {str(e)[:200]}") from e


class FailEpisodeOnCrash(_Guarded):
    """on_crash="fail_episode": a policy that raises (the expert's planner asserting in a perturbed
    world, a bug) fails its own episode: from then on it outputs nothing, and `crash` says why."""

    crash = ""

    def begin(self, env, task) -> None:
        self.crash = ""
        self._guard(self.inner.begin, env, task)

    def act(self, messages, env, step, attempt):
        return "" if self.crash else self._guard(self.inner.act, messages, env, step, attempt) or ""

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except (PolicyError, EpisodeTimeout):
            raise
        except Exception as e:
            self.crash = f"{type(e).__name__}: {e}"[:300]
            return None
