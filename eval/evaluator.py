"""Evaluation with a fleet of Ray agent actors driving environments through one policy.

    lam eval --model-url http://127.0.0.1:8000/v1 --model export --levels BabyAI-GoToLocal-v0 --episodes 200

Every episode is saved in the trajectory schema (level, seed, every action) so anyone can replay
it in the environment and confirm the verdict (`lam eval --replay DIR`).
"""
from __future__ import annotations

import time
from pathlib import Path

from agent.worker import AgentWorker
from data_collection.schema import episode_to_records
from data_collection.store import TrajectoryStore
from envs.base import Task
from eval.metrics import episode_summaries, per_level, summarize


class EvalWorker(AgentWorker):
    def evaluate(self, tasks: list[Task], id_prefix: str) -> list[list[dict]]:
        return [episode_to_records(ep, model=self.model) for ep in self.run(tasks, id_prefix) if ep.steps]


def evaluate(
    name: str,
    env: str,
    tasks: list[Task],
    policy: dict,
    runner: dict,
    workers: int,
    out_dir: str | Path,
    chunk: int = 8,
    progress: bool = True,
) -> dict:
    """Run `tasks` with `policy` on `workers` Ray actors; write episodes under out_dir/name.
    Resumable: chunks already on disk are not re-run."""
    import ray
    from rich.progress import Progress

    from cluster.ray_local import init_ray

    store = TrajectoryStore(Path(out_dir) / name)
    store.root.mkdir(parents=True, exist_ok=True)
    done = {k.split("/", 1)[1] for k in store.manifest()["shards"]}
    chunks = [(f"chunk-{i // chunk:05d}", tasks[i : i + chunk]) for i in range(0, len(tasks), chunk)]
    todo = [(n, c) for n, c in chunks if n not in done]

    started = init_ray()
    Actor = ray.remote(num_cpus=0.25 if policy.get("kind") == "model" else 1, max_restarts=2, max_task_retries=2)(EvalWorker)
    actors = [Actor.remote(env, runner, policy) for _ in range(max(1, workers))]
    t0 = time.perf_counter()
    try:
        with Progress(disable=not progress) as bar:
            job = bar.add_task(f"eval {name}", total=len(tasks), completed=len(tasks) - sum(len(c) for _, c in todo))
            queue, in_flight, free = list(todo), {}, list(actors)
            while queue or in_flight:
                while queue and free:
                    n, c = queue.pop(0)
                    a = free.pop()
                    in_flight[a.evaluate.remote(c, name)] = (n, a, len(c))
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                n, a, size = in_flight.pop(ready[0])
                free.append(a)
                episodes = ray.get(ready[0])
                store.write_shard("episodes", n, [r for ep in episodes for r in ep])
                bar.update(job, advance=size)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
    wall = time.perf_counter() - t0
    records = store.read_records("episodes")
    eps = episode_summaries(records)
    result = {"overall": summarize(eps), "levels": per_level(eps), "wall_s": wall}
    result["overall"]["episodes_per_s"] = len(tasks) / wall if todo else None
    return result


def replay_dir(path: str | Path) -> dict:
    """Re-run every saved episode's actions in a fresh environment; count verdict mismatches."""
    from data_collection.store import group_episodes
    from envs.babyai import replay

    store = TrajectoryStore(Path(path))
    checked, mismatched = 0, []
    for ep in group_episodes(store.read_records("episodes")):
        actions = [r["action"] for r in ep if r["action"] and not r["blocked"]]
        verdict = replay(ep[0]["level"], ep[0]["seed"], actions)
        checked += 1
        if verdict != ep[-1]["episode_success"]:
            mismatched.append(ep[0]["episode_id"])
    return {"checked": checked, "mismatched": mismatched}
