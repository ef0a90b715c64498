"""Ray collector actors running the agent's episode runner with an expert (or a model).

    lam collect --env babyai --levels BabyAI-GoToLocal-v0 --episodes 5000 --workers 2 --out runs/data

Keeps only environment-verified successes in `train/`; failures go, labelled, to `failures/`;
episodes over their time limit are dropped and counted; identical episodes are kept once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.worker import AgentWorker
from data_collection.schema import episode_to_records
from data_collection.store import TrajectoryStore
from envs.base import Task
from envs.registry import sample_tasks


@dataclass
class CollectConfig:
    env: str = "babyai"
    levels: list[str] = field(default_factory=lambda: ["BabyAI-GoToLocal-v0"])
    episodes: int = 1000
    workers: int = 2
    out: str = "runs/data"
    shard_episodes: int = 250
    policy: dict = field(default_factory=lambda: {"kind": "expert"})
    max_steps: int = 64
    time_limit_s: float = 10.0
    base_seed: int = 0
    split: str = "train"


def _episode_records(worker: AgentWorker, tasks: list[Task], id_prefix: str) -> list[list[dict]]:
    out = []
    for ep in worker.run(tasks, id_prefix):
        out.append(episode_to_records(ep, model=worker.model) if ep.steps else [_empty_record(ep)])
    return out


class CollectorWorker(AgentWorker):
    """An agent worker that returns trajectory records (what the driver writes as shards)."""

    def collect(self, tasks: list[Task], id_prefix: str) -> list[list[dict]]:
        return _episode_records(self, tasks, id_prefix)


def _empty_record(ep) -> dict:
    # An episode that ended before any step (e.g. the bot hung at once) still gets counted.
    return {"episode_id": ep.episode_id, "end_reason": ep.end_reason, "episode_success": False, "_empty": True}


def collect(cfg: CollectConfig, resume: bool = False, progress: bool = True) -> dict:
    import ray
    from rich.progress import Progress

    from cluster.ray_local import init_ray

    store = TrajectoryStore(Path(cfg.out))
    store.root.mkdir(parents=True, exist_ok=True)
    done_shards = set()
    if store.manifest()["shards"]:
        if not resume:
            raise FileExistsError(f"{cfg.out} already holds a dataset; pass --resume to continue it or choose another --out")
        done_shards = {v["shard"] for v in store.manifest()["shards"].values() if "shard" in v}
    store.set_meta(env=cfg.env, levels=cfg.levels, episodes_requested=cfg.episodes, policy=cfg.policy)

    tasks = sample_tasks(cfg.env, cfg.levels, cfg.split, cfg.episodes, base_seed=cfg.base_seed)
    chunks = [tasks[i : i + cfg.shard_episodes] for i in range(0, len(tasks), cfg.shard_episodes)]
    todo = [(f"shard-{i:05d}", c) for i, c in enumerate(chunks) if f"shard-{i:05d}" not in done_shards]
    seen_hashes = _existing_hashes(store) if done_shards else set()

    started = init_ray()
    runner = {"max_steps": cfg.max_steps, "time_limit_s": cfg.time_limit_s}
    Actor = ray.remote(num_cpus=1, max_restarts=3, max_task_retries=3)(CollectorWorker)
    actors = [Actor.remote(cfg.env, runner, cfg.policy) for _ in range(max(1, cfg.workers))]
    stats = {"episodes": 0, "kept": 0, "failures": 0, "dropped_time_limit": 0, "duplicates": 0}
    t0 = time.perf_counter()
    try:
        with Progress(disable=not progress) as bar:
            job = bar.add_task("collect", total=sum(len(c) for _, c in todo))
            in_flight: dict = {}
            queue = list(todo)
            free = list(actors)
            while queue or in_flight:
                while queue and free:
                    name, chunk = queue.pop(0)
                    actor = free.pop()
                    in_flight[actor.collect.remote(chunk, name)] = (name, actor)
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                name, actor = in_flight.pop(ready[0])
                free.append(actor)
                episodes = ray.get(ready[0])
                _write_shard(store, name, episodes, seen_hashes, stats)
                bar.update(job, advance=len(episodes))
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
    stats["wall_s"] = time.perf_counter() - t0
    stats["episodes_per_s"] = stats["episodes"] / max(stats["wall_s"], 1e-9)
    return stats


def _existing_hashes(store: TrajectoryStore) -> set[str]:
    try:
        return set(store.read(columns=["episode_hash"]).column("episode_hash").to_pylist())
    except Exception:
        return set()


def _write_shard(store: TrajectoryStore, name: str, episodes: list[list[dict]], seen: set[str], stats: dict) -> None:
    kept, failed = [], []
    for recs in episodes:
        stats["episodes"] += 1
        first = recs[0]
        if first.get("_empty") or first["end_reason"] == "time_limit":
            stats["dropped_time_limit"] += first["end_reason"] == "time_limit"
            continue
        if first["episode_success"]:
            if first["episode_hash"] in seen:
                stats["duplicates"] += 1
                continue
            seen.add(first["episode_hash"])
            kept.extend(recs)
            stats["kept"] += 1
        else:
            failed.extend(recs)
            stats["failures"] += 1
    # Failures are written before train so a crash between the two re-runs the whole shard.
    if failed:
        store.write_shard("failures", name, failed, {"shard": name})
    store.write_shard("train", name, kept, {"shard": name})
