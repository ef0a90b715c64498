"""Collector actors and the fleet that keeps them busy and alive.

A `CollectorActor` runs batches of tasks through the agent's episode runner and returns one Arrow
table of trajectory rows per batch plus a small outcome per episode; the driver decides what to
keep. Actors are created with Ray `max_restarts` / `max_task_retries`: when one dies, Ray restarts
it and re-runs the batches it had in flight. If Ray gives up (restarts or retries exhausted), the
fleet replaces the actor and queues its batches again. Episode ids are deterministic in the task,
so a re-run batch can never produce a second copy of an episode.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from agent.episode import RunnerConfig, episode_id, run_episode
from data_collection.experts import build_collect_policy
from data_collection.schema import episode_to_records, records_to_table
from envs.base import Task
from envs.registry import make_env

RESTARTS = 3  # per actor, by Ray
BATCH_TRIES = 3  # per batch, by the fleet, after Ray's own retries
# Episodes in a row that a model policy's server failed (each after its own retries): the server is
# down or refuses every request, so the batch stops there and the driver stops the collection.
SERVER_DOWN_STREAK = 8


def _unnice(to: int) -> None:
    """Ray starts workers at niceness 15 (its `worker_niceness`). On a machine shared with other
    jobs that leaves collectors a sliver of the CPU, slower than the same loop in a plain process
    (measured: 0.57x). Run them at the driver's niceness instead, where the OS allows it."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > to:
            os.setpriority(os.PRIO_PROCESS, 0, to)
    except (OSError, AttributeError):
        pass  # not permitted (no CAP_SYS_NICE) or not POSIX: keep Ray's


class CollectorActor:
    def __init__(self, env: str, runner: dict, policy: dict, provenance: dict) -> None:
        _unnice(provenance.get("niceness", 0))
        self.env = make_env(env)
        self.runner = RunnerConfig(**runner)
        self.policy = build_collect_policy(policy)
        self.uses_server = policy.get("kind") == "model"  # its policy_error means the server failed
        self.model, self.version = provenance["model"], provenance["code_version"]

    def pid(self) -> int:
        return os.getpid()

    def run_batch(self, batch: list[tuple[int, Task]]) -> dict:
        """Run every (index, task); rows of all episodes in one table, in batch order."""
        t0, c0 = time.perf_counter(), time.process_time()
        rows: list[dict] = []
        outcomes = []
        streak = 0
        for index, task in batch:
            if streak >= SERVER_DOWN_STREAK:
                break  # the rest would fail the same way: return early, the driver stops
            out = {"index": index, "level": task.level, "row_start": len(rows), "rows": 0, "steps": 0}
            try:
                ep = run_episode(self.env, self.policy, task, self.runner, episode_id=episode_id(task))
            except Exception as e:  # the environment itself crashed: counted, nothing to store
                outcomes.append({**out, "end_reason": "env_error", "success": False, "error": f"{type(e).__name__}: {e}"})
                streak = 0
                continue
            origin = self.env.variant_info() if hasattr(self.env, "variant_info") else None
            recs = episode_to_records(ep, model=self.model, origin=origin, version=self.version) if ep.steps else []
            rows.extend(recs)
            outcomes.append({
                **out, "rows": len(recs), "steps": len(ep.steps), "success": ep.success, "end_reason": ep.end_reason,
                "hash": recs[0]["episode_hash"] if recs else "", "error": ep.error,
                "server_failed": self.uses_server and ep.end_reason == "policy_error",
            })
            streak = streak + 1 if outcomes[-1]["server_failed"] else 0
        table = records_to_table(rows)
        return {"outcomes": outcomes, "table": table, "pid": os.getpid(), "node_id": _ray_node_id(),
                "busy_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                "process_cpu_s": time.process_time()}  # since the actor started: imports, Ray's own work


def _ray_node_id() -> str:
    """The Ray node this actor runs on ("" outside Ray): provenance kept in the batch's manifest entry."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:
        return ""


@dataclass
class _Job:
    batch: list[tuple[int, Task]]
    slot: int
    actor: object  # the handle it went to: only the first failure seen on a handle replaces it
    tries: int = 0


class Fleet:
    """W Ray actors with up to `depth` batches in flight each; `workers=0` runs batches in this
    process instead (the plain-process baseline of bench/collect.py, and handy for debugging)."""

    def __init__(self, workers: int, env: str, runner: dict, policy: dict, provenance: dict, depth: int = 2) -> None:
        self.args = (env, runner, policy, provenance)
        self.workers, self.depth = workers, depth
        self.restarts = self.replaced = self.retried = 0
        self._done: list[tuple[list, dict]] = []
        self._inflight: dict = {}
        if workers == 0:
            self._local = CollectorActor(*self.args)
            return
        import ray

        from data_collection.ray_local import init_ray

        self.ray = ray
        self._started_ray = init_ray()
        # A model policy mostly waits on HTTP: a quarter CPU each lets many share the cores.
        self._cls = ray.remote(num_cpus=1 if policy.get("kind") != "model" else 0.25,
                               max_restarts=RESTARTS, max_task_retries=RESTARTS)(CollectorActor)
        self.actors = [self._cls.remote(*self.args) for _ in range(workers)]
        try:
            self.pids = ray.get([a.pid.remote() for a in self.actors])
        except BaseException:  # an actor could not start (bad policy spec, missing package): clean up
            self.close()
            raise

    # -- dispatch ----------------------------------------------------------------------
    def free_slots(self) -> int:
        if self.workers == 0:
            return 0 if self._done else 1
        return self.workers * self.depth - len(self._inflight)

    def in_flight_tasks(self) -> int:
        return sum(len(j.batch) for j in self._inflight.values())

    def lowest_in_flight(self) -> float:
        """The first task index of the earliest batch still running (inf when none is)."""
        return min((j.batch[0][0] for j in self._inflight.values()), default=float("inf"))

    def submit(self, batch: list[tuple[int, Task]], tries: int = 0) -> None:
        if self.workers == 0:
            self._done.append((batch, self._local.run_batch(batch)))
            return
        load = [0] * self.workers
        for j in self._inflight.values():
            load[j.slot] += 1
        slot = min(range(self.workers), key=load.__getitem__)
        ref = self.actors[slot].run_batch.remote(batch)
        self._inflight[ref] = _Job(batch, slot, self.actors[slot], tries)

    def wait(self, timeout: float = 1.0) -> list[tuple[list, dict]]:
        """Finished (batch, result) pairs; a batch whose actor died for good is re-queued."""
        if self.workers == 0:
            done, self._done = self._done, []
            return done
        if not self._inflight:
            return []
        ready, _ = self.ray.wait(list(self._inflight), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            job = self._inflight.pop(ref)
            try:
                result = self.ray.get(ref)
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.ObjectLostError) as e:
                if self.actors[job.slot] is job.actor:
                    self._replace(job.slot)
                if job.tries + 1 >= BATCH_TRIES:
                    raise RuntimeError(f"a batch of {len(job.batch)} tasks failed {BATCH_TRIES} times: {e}") from e
                self.retried += 1
                self.submit(job.batch, job.tries + 1)
                continue
            if result["pid"] != self.pids[job.slot]:  # Ray restarted this actor (and re-ran the batch)
                self.restarts += 1
                self.pids[job.slot] = result["pid"]
            out.append((job.batch, result))
        return out

    def _replace(self, slot: int) -> None:
        try:
            self.ray.kill(self.actors[slot], no_restart=True)
        except Exception:
            pass
        self.actors[slot] = self._cls.remote(*self.args)
        self.pids[slot] = self.ray.get(self.actors[slot].pid.remote())
        self.replaced += 1

    def close(self) -> None:
        if self.workers == 0:
            return
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:
                pass
        if self._started_ray:
            self.ray.shutdown()
