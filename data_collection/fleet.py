"""The one rollout fleet: Ray actors that run the agent's episode runner, kept busy and alive.

Collection (data_collection/collector.py: the first N unique verified episodes), evaluation
(eval/evaluator.py: tasks x trials, every suite variant) and self-boosting (cluster/pipeline.py,
which collects with the model under training) all run on it:

    fleet = Fleet(workers=4, env="babyai", runner={"max_steps": 64})
    fleet.submit(work, chunk)              # work: a module-level function work(actor, chunk, attempt) -> dict
    for chunk, result in fleet.wait(): ... # result: work's dict plus pid, node_id, busy_s, cpu_s

A `RolloutActor` holds one environment, the runner's settings and what its chunks build once and
reuse (policies from agent.policy_factory, perturbed environments): `actor.cached(key, make)`. The
client's `work` function says what a chunk is and what comes back (collection: an Arrow table and
an outcome per episode; evaluation: records and a sidecar per episode), so the fleet knows nothing
of datasets or metrics. The fleet keeps up to `depth` chunks in flight per actor, replaces an actor
that died and re-runs its chunks (up to `tries` times; then `on_give_up(chunk, error)` decides:
raise, the default, or a result that records the loss), kills actors stuck past `chunk_timeout_s`,
and can be shared by several runs (the variants of a suite). With `ray_restarts` > 0 Ray itself
restarts a dead actor and re-runs its chunks first (collection); evaluation uses 0 so every death is
counted. `workers=0` runs chunks in this process (the plain-process baseline of bench/collect.py).
`call(slot, work, chunk)` runs a chunk on one given actor and waits: work whose state lives in an
actor between chunks (agent sessions, data_collection/session_fleet.py) is routed that way.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

from agent.episode import RunnerConfig
from agent.runner_config import wire
from envs.registry import make_env

RESTARTS = 3  # per actor, by Ray, for fleets that let Ray restart actors (collection)
BATCH_TRIES = 3  # per chunk, by the fleet, after Ray's own retries


def _unnice(to: int) -> None:
    """Ray starts workers at niceness 15 (its `worker_niceness`). On a machine shared with other
    jobs that leaves actors a sliver of the CPU, slower than the same loop in a plain process
    (measured: 0.57x). Run them at the driver's niceness instead, where the OS allows it."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > to:
            os.setpriority(os.PRIO_PROCESS, 0, to)
    except (OSError, AttributeError):
        pass  # not permitted (no CAP_SYS_NICE) or not POSIX: keep Ray's


class RolloutActor:
    """One environment and the runner's settings; chunks of any client run on it (see the module docstring)."""

    def __init__(self, env: str, runner: dict, niceness: int = 0, setup=None) -> None:
        _unnice(niceness)
        if "torch" in sys.modules:  # only if something imported it: importing torch costs seconds per actor
            sys.modules["torch"].set_num_threads(1)  # many processes share the cores: oversubscription is slow
        self.env_name = env
        self.env = make_env(env) if env else None  # "": the chunks make their own (agent sessions: one each)
        self.runner = RunnerConfig(**runner)
        self._cache: dict = {}
        if setup is not None:  # e.g. build the policy now: a bad spec fails the fleet's start, not a chunk
            setup(self)

    def pid(self) -> int:
        return os.getpid()

    def cached(self, key, make):
        """What chunks build once per actor (a policy per spec and trial, an environment per perturbation)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def run(self, work, chunk, attempt: int = 0) -> dict:
        t0, c0 = time.perf_counter(), time.process_time()
        out = work(self, chunk, attempt)
        return {**out, "pid": os.getpid(), "node_id": _ray_node_id(), "busy_s": time.perf_counter() - t0,
                "cpu_s": time.process_time() - c0,
                "process_cpu_s": time.process_time()}  # since the actor started: imports, Ray's own work


def run_episodes(actor: RolloutActor, chunk: tuple, attempt: int = 0) -> dict:
    """The plainest work: (tasks, id_prefix, policy spec) -> {"episodes": [Episode]}, ids deterministic
    in (prefix, level, seed), so a re-run replaces, never duplicates. Long-term memory (runner.memory)
    is shared by one actor's episodes."""
    from agent.episode import episode_id, run_episode
    from agent.memory import EpisodicStore, Memory, MemoryConfig
    from agent.policy_factory import build_policy

    tasks, prefix, spec = chunk
    policy = actor.cached(("policy", repr(sorted(spec.items()))), lambda: build_policy(spec))
    mem = MemoryConfig(**actor.runner.memory)
    store = actor.cached("memory", lambda: EpisodicStore(mem.store_path) if mem.long_term_k > 0 else None)
    return {"episodes": [run_episode(actor.env, policy, t, actor.runner, episode_id=episode_id(t, prefix),
                                     memory=Memory(mem, store) if mem.enabled else None) for t in tasks]}


def _ray_node_id() -> str:
    """The Ray node this actor runs on ("" outside Ray): provenance kept in the batch's manifest entry."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:
        return ""


def _give_up(chunk, error: BaseException, tries: int):
    raise RuntimeError(f"a chunk of {len(chunk)} tasks failed {tries} times: {error}") from error


@dataclass
class _Job:
    work: object
    chunk: object
    slot: int
    actor: object  # the handle it went to: only the first failure seen on a handle replaces it
    tries: int = 0
    started: float = 0.0


class Fleet:
    """Up to `workers` Ray actors (`start` of them now, more on `grow`) with up to `depth` chunks in flight each."""

    def __init__(self, workers: int, env: str, runner: RunnerConfig | dict, *, cpus: float = 1.0, depth: int = 2,
                 niceness: int | None = None, setup=None, ray_restarts: int = RESTARTS, tries: int = BATCH_TRIES,
                 chunk_timeout_s: float | None = None, on_give_up=_give_up, start: int | None = None,
                 concurrency: int = 1) -> None:
        niceness = os.getpriority(os.PRIO_PROCESS, 0) if niceness is None else niceness
        self.args = (env, wire(runner), niceness, setup)  # the settings cross Ray as a dict
        self.depth, self.tries, self.chunk_timeout_s, self.on_give_up = depth, tries, chunk_timeout_s, on_give_up
        self.restarts = self.replaced = self.retried = self.failures = 0
        self._done: list[tuple] = []
        self._inflight: dict = {}
        self.actors: list = []
        self.pids: list[int] = []
        self.workers = workers
        self._replacing = threading.Lock()  # call() may run in many threads
        if workers == 0:
            self._local = RolloutActor(*self.args)
            return
        import ray

        from data_collection.ray_local import init_ray

        self.ray = ray
        self._started_ray = init_ray()
        # concurrency > 1: an actor runs that many calls at once in threads (sessions waiting on a model)
        self._cls = ray.remote(num_cpus=cpus, max_restarts=ray_restarts, max_task_retries=ray_restarts,
                               max_concurrency=concurrency)(RolloutActor)
        # An actor the cluster has no room for would sit pending with a chunk forever: never ask for more.
        if cpus > 0:
            self.workers = max(1, min(workers, int(ray.cluster_resources().get("CPU", 1) / cpus)))
        self.grow(self.workers if start is None else start)

    def grow(self, n: int) -> None:
        """Start actors until min(n, workers) run (an evaluation of 2 chunks needs no 16)."""
        if self.workers == 0 or len(self.actors) >= min(n, self.workers):
            return
        new = [self._cls.remote(*self.args) for _ in range(min(n, self.workers) - len(self.actors))]
        try:
            self.pids += self.ray.get([a.pid.remote() for a in new])
        except BaseException:  # an actor could not start (bad policy spec, missing package): clean up
            self.actors += new
            self.close()
            raise
        self.actors += new

    # -- dispatch ----------------------------------------------------------------------
    def free_slots(self) -> int:
        if self.workers == 0:
            return 0 if self._done else 1
        return len(self.actors) * self.depth - len(self._inflight)

    def in_flight_tasks(self) -> int:
        return sum(len(j.chunk) for j in self._inflight.values())

    def lowest_in_flight(self) -> float:
        """The first task index of the earliest chunk still running (inf when none is), for chunks of (index, task)."""
        return min((j.chunk[0][0] for j in self._inflight.values()), default=float("inf"))

    def submit(self, work, chunk, tries: int = 0) -> None:
        if self.workers == 0:
            self._done.append((chunk, self._local.run(work, chunk, tries)))
            return
        self.grow(1)
        load = [0] * len(self.actors)
        for j in self._inflight.values():
            load[j.slot] += 1
        slot = min(range(len(self.actors)), key=load.__getitem__)
        ref = self.actors[slot].run.remote(work, chunk, tries)
        self._inflight[ref] = _Job(work, chunk, slot, self.actors[slot], tries, time.monotonic())

    def wait(self, timeout: float | None = 1.0) -> list[tuple]:
        """Finished (chunk, result) pairs; a chunk whose actor died is re-run, `tries` times in all."""
        if self.workers == 0:
            done, self._done = self._done, []
            return done
        if not self._inflight:
            return []
        if self.chunk_timeout_s:
            timeout = min(timeout or 1.0, 1.0)
        ready, _ = self.ray.wait(list(self._inflight), num_returns=1, timeout=timeout)
        if not ready and self.chunk_timeout_s:  # kill actors stuck past the limit: their chunks re-run
            for job in self._inflight.values():
                if time.monotonic() - job.started > self.chunk_timeout_s:
                    self.ray.kill(job.actor, no_restart=True)
        out = []
        for ref in ready:
            job = self._inflight.pop(ref)
            try:
                result = self.ray.get(ref)
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.ObjectLostError,
                    self.ray.exceptions.WorkerCrashedError) as e:
                self.failures += 1
                if self.actors[job.slot] is job.actor:
                    self._replace(job.slot)
                if job.tries + 1 >= self.tries:
                    out.append((job.chunk, self.on_give_up(job.chunk, e, job.tries + 1)))
                    continue
                self.retried += 1
                self.submit(job.work, job.chunk, job.tries + 1)
                continue
            if result["pid"] != self.pids[job.slot]:  # Ray restarted this actor (and re-ran the chunk)
                self.restarts += 1
                self.pids[job.slot] = result["pid"]
            out.append((job.chunk, result))
        return out

    def call(self, slot: int, work, chunk) -> dict:
        """Run one chunk on actor `slot` and wait for its result. An actor found dead is replaced (by the
        first caller that sees it; the new one starts empty) and the Ray error raised to the caller."""
        if self.workers == 0:
            return self._local.run(work, chunk)
        actor = self.actors[slot]
        try:
            return self.ray.get(actor.run.remote(work, chunk))
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError):
            with self._replacing:
                self.failures += 1
                if self.actors[slot] is actor:
                    self._replace(slot)
            raise

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
        self.actors, self.pids = [], []
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False
