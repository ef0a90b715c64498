"""Policies behind one interface: expert, random, scripted replay, and a model over the OpenAI API."""
from __future__ import annotations

import random
import time
import zlib
from typing import Any, Protocol

from envs.base import Environment, Task


class PolicyError(RuntimeError):
    """The policy could not produce any output (e.g. the model server is unreachable)."""


class Policy(Protocol):
    name: str

    def begin(self, env: Environment, task: Task) -> None:
        """Called after env.reset(task), before the first act()."""

    def act(self, messages: list[dict], env: Environment, step: int, attempt: int) -> str:
        """Return raw text for the action; grounding parses and validates it."""


class ExpertPolicy:
    """The environment's own expert (the BabyAI bot): knows internals the model never sees."""

    name = "expert"

    def begin(self, env: Environment, task: Task) -> None:
        self._expert = env.make_expert()

    def act(self, messages, env, step, attempt) -> str:
        return self._expert.act().name


class RandomPolicy:
    """Uniform over the action space, never claiming completion (a claim is not an action)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed

    def begin(self, env, task) -> None:
        self._rng = random.Random(f"{self._seed}/{task.task_id}")

    def act(self, messages, env, step, attempt) -> str:
        return self._rng.choice([a for a in env.action_names() if a != "done"])


class ScriptedPolicy:
    """Replays a fixed action list (recorded episodes, gold sequences); then claims done."""

    name = "scripted"

    def __init__(self, actions_by_task: dict[str, list[str]]) -> None:
        self._by_task = actions_by_task

    def begin(self, env, task) -> None:
        self._actions = list(self._by_task.get(task.task_id, []))

    def act(self, messages, env, step, attempt) -> str:
        return self._actions[step] if step < len(self._actions) else "done"


class ModelPolicy:
    """A model behind any OpenAI-compatible server (the embedded one, vLLM, a hosted model)."""

    name = "model"

    def __init__(
        self,
        base_url: str,
        model: str,
        temperature: float = 0.0,
        max_tokens: int = 16,
        timeout_s: float = 60.0,
        retries: int = 3,
        api_key: str = "EMPTY",
        seed: int = 0,
    ) -> None:
        from openai import OpenAI  # imported here so env-only workers don't pay for it

        self.base_url, self.model, self.temperature = base_url, model, temperature
        self.max_tokens, self.retries, self.seed = max_tokens, retries, seed
        self._client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self.last_latency_s = 0.0

    def begin(self, env, task) -> None:
        self._task = task

    def act(self, messages, env, step, attempt) -> str:
        # Seed per (task, step, attempt): sampled runs are reproducible and retries differ.
        seed = zlib.crc32(f"{self._task.task_id}/{step}/{attempt}/{self.seed}".encode()) if self.temperature > 0 else None
        kwargs: dict[str, Any] = dict(model=self.model, messages=messages, max_tokens=self.max_tokens)
        kwargs["temperature"] = self.temperature if attempt == 0 else max(self.temperature, 0.7)
        if seed is not None or attempt > 0:
            kwargs["seed"] = seed if seed is not None else attempt
        delay, last_error = 0.5, None
        for _ in range(self.retries + 1):
            t0 = time.perf_counter()
            try:
                out = self._client.chat.completions.create(**kwargs)
                self.last_latency_s = time.perf_counter() - t0
                return out.choices[0].message.content or ""
            except Exception as e:  # connection refused, timeouts, 5xx, 429: back off and retry
                last_error = e
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
        raise PolicyError(f"model server {self.base_url} failed after {self.retries + 1} tries: {last_error}")
