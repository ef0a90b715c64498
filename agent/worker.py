"""An agent worker: one environment, one policy, the episode runner. Collection and evaluation
wrap it in a Ray actor (`ray.remote(AgentWorker)`) to make a fleet sharing one model endpoint."""
from __future__ import annotations

import os

from agent.episode import Episode, RunnerConfig, episode_id, run_episode
from agent.memory import EpisodicStore, Memory, MemoryConfig
from agent.policies import ExpertPolicy, ModelPolicy, PrefixExpertPolicy, RandomPolicy
from envs.base import Task
from envs.registry import make_env


def build_policy(spec: dict):
    """spec: {"kind": "expert"} | {"kind": "random", "seed": 0} |
    {"kind": "prefix-expert", "seed": 0, "max_prefix": 12} |
    {"kind": "model", "base_url": ..., "model": ..., "temperature": 0.0, "retries": 3}"""
    kind = spec.get("kind", "expert")
    if kind == "expert":
        return ExpertPolicy()
    if kind == "random":
        return RandomPolicy(seed=int(spec.get("seed", 0)))
    if kind == "prefix-expert":
        return PrefixExpertPolicy(seed=int(spec.get("seed", 0)), max_prefix=int(spec.get("max_prefix", 12)))
    if kind == "model":
        return ModelPolicy(
            base_url=spec["base_url"],
            model=spec["model"],
            temperature=float(spec.get("temperature", 0.0)),
            max_tokens=int(spec.get("max_tokens", 16)),
            seed=int(spec.get("seed", 0)),
            timeout_s=float(spec.get("timeout_s", 60.0)),
            retries=int(spec.get("retries", 3)),
            api_key=spec.get("api_key") or os.environ.get("LAM_API_KEY", "EMPTY"),
            tool_max_tokens=int(spec.get("tool_max_tokens", 512)),
        )
    raise ValueError(f"unknown policy kind {kind!r}: expected expert, random, prefix-expert or model")


class AgentWorker:
    def __init__(self, env: str, runner: dict, policy: dict) -> None:
        try:
            import torch

            torch.set_num_threads(1)  # many processes share 2 cores: oversubscription is 100x slower
        except ImportError:
            pass
        self.env = make_env(env)
        self.runner = RunnerConfig(**runner)
        self.policy = build_policy(policy)
        self.model = policy.get("model", "")
        # Long-term memory is shared by this worker's episodes (and, with a store_path, persisted).
        mem = MemoryConfig(**self.runner.memory)
        self.store = EpisodicStore(mem.store_path) if mem.long_term_k > 0 else None

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, tasks: list[Task], id_prefix: str) -> list[Episode]:
        """Episode ids are deterministic in (prefix, level, seed): a re-run replaces, never duplicates."""
        return [
            run_episode(self.env, self.policy, t, self.runner, episode_id=episode_id(t, id_prefix),
                        memory=self._memory())
            for t in tasks
        ]

    def _memory(self) -> Memory | None:
        mem = MemoryConfig(**self.runner.memory)
        return Memory(mem, self.store) if mem.enabled else None
