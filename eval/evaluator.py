"""Evaluation with a fleet of Ray agent actors driving environments through one policy.

    lam eval --model-url http://127.0.0.1:8000/v1 --model export --levels BabyAI-GoToLocal-v0 --episodes 200
    lam eval --suite robustness --policy model --model-url URL --trials 3 --out runs/eval-rob [--resume]

Work is tasks x trials, cut into chunks; each finished chunk is one Parquet shard in the trajectory
schema plus a sidecar `events/<chunk>.json` (trial, attempts, infrastructure errors, perturbations,
env progress, tokens). A chunk on disk is never re-run, so a killed evaluation resumes where it was.

Infrastructure faults are not agent failures. An episode whose policy raised PolicyError (model
server down or timing out) or whose environment crashed is re-run up to `episode_retries` times; a
chunk whose actor died is re-run on a fresh actor up to `chunk_retries` times. What still fails is
written as an episode with end_reason "infra_error": excluded from success and failure, counted
on its own, never dropped. Every saved episode of a replayable world replays (`lam eval --replay DIR`, eval/replays.py).
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from agent.episode import RunnerConfig, episode_id, run_episode
from data_collection.atomic_file import write_atomic
from data_collection.experts import check_model_endpoint  # noqa: F401  (re-exported: lam eval and the suites check first)
from data_collection.schema import SCHEMA_VERSION, TRAJECTORY_SCHEMA, code_version, episode_to_records
from data_collection.store import TrajectoryStore
from envs.base import Task
from eval.metrics import episode_summaries, per_level, summarize
from eval.perturb import PerturbedEnv

TRIAL_SEED_STRIDE = 1_000_003  # trial k runs the policy with seed + k * stride: trials differ, re-runs don't
POLICY_NAMES = {"expert": "expert", "random": "random", "prefix-expert": "prefix-expert", "model": "model"}


def placeholder_record(eid: str, task: Task, policy: str, model: str, end_reason: str, error: str = "") -> dict:
    """The one row of an episode that took no step (crashed at reset, timed out in the expert's
    setup, or failed on infrastructure): step -1, so it is counted but has no action to replay.
    Built from the schema, so it stays valid when columns are added."""
    import pyarrow as pa

    defaults = {pa.types.is_string: "", pa.types.is_boolean: False, pa.types.is_integer: 0, pa.types.is_floating: 0.0}
    row = {f.name: next((v for test, v in defaults.items() if test(f.type)), None) for f in TRAJECTORY_SCHEMA}
    row.update({
        "episode_id": eid, "step": -1, "env": task.env, "level": task.level, "task_id": task.task_id,
        "split": task.split, "seed": task.seed, "done": True, "end_reason": end_reason, "policy": policy,
        "model": model, "code_version": code_version(), "created_at": time.time(), "schema_version": SCHEMA_VERSION,
    })
    if "base_level" in row:
        row["base_level"] = task.level
    if "error" in row:
        row["error"] = error[:500]
    return row


class CrashGuard:
    """A policy that raises (the expert's planner asserting in a perturbed world, a bug) fails its own
    episode: from then on it outputs nothing, which the runner counts as invalid actions until the
    step limit, and `crash` says why. PolicyError (model server unreachable) and the episode's time
    limit pass through: the first is infrastructure, the second the runner's own business."""

    def __init__(self, policy) -> None:
        self.policy, self.name, self.crash = policy, policy.name, ""

    @property
    def usage(self) -> dict:
        return getattr(self.policy, "usage", {})

    def begin(self, env, task) -> None:
        self.crash = ""
        self._guard(self.policy.begin, env, task)

    def act(self, messages, env, step, attempt):
        return "" if self.crash else self._guard(self.policy.act, messages, env, step, attempt) or ""

    def _guard(self, fn, *args):
        from agent.episode import EpisodeTimeout
        from agent.policies import PolicyError

        try:
            return fn(*args)
        except (PolicyError, EpisodeTimeout):
            raise
        except Exception as e:
            self.crash = f"{type(e).__name__}: {e}"[:300]
            return None


class EvalWorker:
    """One environment, the episode runner, and per call a policy and a perturbation: one actor pool
    serves every variant of a suite. Policies are built once per (spec, trial), wrappers per spec."""

    def __init__(self, env: str, runner: dict, episode_retries: int = 2, seed: int = 0) -> None:
        if "torch" in sys.modules:  # only if something imported it: importing torch costs seconds per actor
            sys.modules["torch"].set_num_threads(1)  # many processes share 2 cores: oversubscription is slow
        from envs.registry import make_env

        self.base_env = make_env(env)
        self.runner = RunnerConfig(**runner)
        self.episode_retries, self.seed = episode_retries, seed
        self._policies: dict[tuple[str, int], CrashGuard] = {}
        self._envs: dict[str, PerturbedEnv] = {}

    def policy(self, spec: dict, trial: int) -> CrashGuard:
        from agent.worker import build_policy

        key = (json.dumps(spec, sort_keys=True), trial)
        if key not in self._policies:
            seed = int(spec.get("seed", 0)) + trial * TRIAL_SEED_STRIDE
            self._policies[key] = CrashGuard(build_policy({**spec, "seed": seed}))
        return self._policies[key]

    def evaluate(self, units: list[tuple[Task, int]], id_prefix: str, chunk_attempt: int = 0,
                 policy: dict | None = None, perturbation: dict | None = None) -> list[dict]:
        """[(task, trial)] -> [{"records": [...], "meta": {...}}], one per unit, in order."""
        key = json.dumps(perturbation or {}, sort_keys=True)
        if key not in self._envs:
            self._envs[key] = PerturbedEnv(self.base_env, perturbation, seed=self.seed)
        self.env, self.model = self._envs[key], (policy or {}).get("model", "")
        die_at = self._death(units, id_prefix, chunk_attempt, perturbation or {})
        out = []
        for i, (task, trial) in enumerate(units):
            if i == die_at:
                os._exit(17)  # the actor_death fault: this worker process dies mid-chunk (OOM kill, lost node)
            out.append(self.run_one(task, trial, id_prefix, chunk_attempt, policy or {"kind": "expert"}))
        return out

    def _death(self, units, id_prefix: str, chunk_attempt: int, perturbation: dict) -> int | None:
        if perturbation.get("kind") != "actor_death" or not units:
            return None
        rng = random.Random(f"{self.seed}/death/{id_prefix}/{units[0][0].task_id}/{units[0][1]}/{chunk_attempt}")
        return rng.randrange(len(units)) if rng.random() < float(perturbation.get("p", 0.0)) else None

    def run_one(self, task: Task, trial: int, id_prefix: str, chunk_attempt: int, spec: dict) -> dict:
        policy, eid = self.policy(spec, trial), episode_id(task, id_prefix, trial)
        errors: list[str] = []
        for attempt in range(self.episode_retries + 1):
            self.env.begin_episode(trial, f"{chunk_attempt}.{attempt}")
            tokens0 = dict(policy.usage)
            try:
                ep = run_episode(self.env, policy, task, self.runner, episode_id=eid)
            except Exception as e:  # the environment (or something under it) broke: not the agent's doing
                errors.append(f"{type(e).__name__}: {e}"[:300])
                continue
            if ep.end_reason == "policy_error":  # the model server failed after the policy's own retries
                errors.append(ep.error[:300])
                continue
            tokens = {k: v - tokens0.get(k, 0) for k, v in policy.usage.items()}
            records = self._records(ep) if ep.steps else [
                placeholder_record(eid, task, policy.name, self.model, ep.end_reason, ep.error)]
            meta = {"trial": trial, "attempts": attempt + 1, "errors": errors, "events": self.env.events,
                    "progress": self.env.progress, "tokens": tokens, "policy_crash": policy.crash}
            return {"records": records, "meta": meta}
        records = [placeholder_record(eid, task, policy.name, self.model, "infra_error", errors[-1])]
        meta = {"trial": trial, "attempts": self.episode_retries + 1, "errors": errors, "events": [],
                "progress": 0.0, "tokens": {}, "infra_error": errors[-1] if errors else "unknown"}
        return {"records": records, "meta": meta}

    def _records(self, ep) -> list[dict]:
        origin = getattr(self.env, "variant_info", None)  # mission variants (envs/babyai_variants.py)
        if origin is None:
            return episode_to_records(ep, model=self.model)
        return episode_to_records(ep, model=self.model, origin=origin())



def _fingerprint(env: str, units: list[tuple[Task, int]], policy: dict, runner: dict, perturbation: dict | None,
                 chunk: int) -> dict:
    # base_url and api_key are where the model is, not what is evaluated: a resumed run may use a new port.
    pol = {k: v for k, v in policy.items() if k not in ("base_url", "api_key")}
    tasks = [f"{t.task_id}#{k}" for t, k in units]
    return {"env": env, "policy": pol, "runner": runner, "perturbation": perturbation or {"kind": "none"},
            "chunk": chunk, "units": len(units), "first": tasks[:1], "last": tasks[-1:]}


def run_units(name: str, env: str, units: list[tuple[Task, int]], policy: dict, runner: dict, workers: int,
              root: str | Path, *, perturbation: dict | None = None, chunk: int = 8, progress: bool = True,
              episode_retries: int = 2, chunk_retries: int = 2, chunk_timeout_s: float | None = None,
              seed: int = 0, pool: "ActorPool | None" = None) -> dict:
    """Run every (task, trial) in `units` on `workers` Ray actors into the store at `root`.
    Chunks already on disk are skipped. Returns run statistics (wall time, retries, deaths).
    `pool`: actors to use (and keep) instead of starting and stopping `workers` new ones."""
    import ray
    from ray.exceptions import RayActorError, WorkerCrashedError
    from rich.console import Console
    from rich.progress import Progress

    from data_collection.ray_local import init_ray

    store = TrajectoryStore(Path(root))
    store.root.mkdir(parents=True, exist_ok=True)
    manifest = store.manifest()
    fp = _fingerprint(env, units, policy, runner, perturbation, chunk)
    old = manifest["meta"].get("fingerprint")
    if manifest["shards"] and old is not None and old != fp:
        raise ValueError(f"{root} holds a different evaluation (env, policy, runner, tasks or chunk size "
                         f"differ); choose another --out")
    store.set_meta(fingerprint=fp, name=name)
    done = {k.split("/", 1)[1] for k in manifest["shards"] if k.startswith("episodes/")}
    chunks = [(f"chunk-{i // chunk:05d}", units[i : i + chunk]) for i in range(0, len(units), chunk)]
    todo = [(n, c, 0) for n, c in chunks if n not in done]
    stats = {"episodes": len(units), "episodes_run": sum(len(c) for _, c, _ in todo), "chunks": len(chunks),
             "chunks_run": len(todo), "actor_deaths": 0, "chunk_retries": 0, "wall_s": 0.0}
    if not todo:
        return stats
    pol_name = POLICY_NAMES.get(policy.get("kind", "expert"), policy.get("kind", "?"))

    started = init_ray()
    own = pool is None
    pool = pool or ActorPool(env, runner, policy, workers, episode_retries, seed)
    t0 = time.perf_counter()
    try:
        with Progress(console=Console(stderr=True), disable=not progress) as bar:  # stdout: results only
            job = bar.add_task(f"eval {name}", total=len(units), completed=len(units) - stats["episodes_run"])
            queue, in_flight, free = list(todo), {}, pool.take(len(todo))
            while queue or in_flight:
                while queue and free:
                    n, c, attempt = queue.pop(0)
                    a = free.pop()
                    ref = a.evaluate.remote(c, name, attempt, policy, perturbation)
                    in_flight[ref] = (n, c, attempt, a, time.monotonic())
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0 if chunk_timeout_s else None)
                if not ready:  # only with a chunk timeout: kill actors stuck past it, retry their chunks
                    for ref, (n, c, attempt, a, t) in list(in_flight.items()):
                        if time.monotonic() - t > chunk_timeout_s:
                            ray.kill(a, no_restart=True)
                    continue
                n, c, attempt, a, _ = in_flight.pop(ready[0])
                try:
                    results = ray.get(ready[0])
                except (RayActorError, WorkerCrashedError) as e:
                    stats["actor_deaths"] += 1
                    free.append(pool.replace(a))
                    if attempt < chunk_retries:
                        stats["chunk_retries"] += 1
                        queue.insert(0, (n, c, attempt + 1))
                        continue
                    msg = f"actor died {attempt + 1} times running this chunk: {type(e).__name__}"
                    results = [_infra_result(name, t, k, pol_name, policy.get("model", ""), msg, attempt + 1)
                               for t, k in c]
                else:
                    free.append(a)
                _write_chunk(store, n, results)
                bar.update(job, advance=len(c))
    finally:
        if own:
            pool.close()
        if started:
            ray.shutdown()
    stats["wall_s"] = time.perf_counter() - t0
    return stats


class ActorPool:
    """The evaluation actors of one run (or of every variant of a suite); dead ones are replaced."""

    def __init__(self, env: str, runner: dict, policy: dict, workers: int, episode_retries: int = 2, seed: int = 0):
        import ray

        cpus = 0.25 if policy.get("kind") == "model" else 1  # model workers mostly wait on HTTP
        cls = ray.remote(num_cpus=cpus, max_restarts=0, max_task_retries=0)(EvalWorker)
        self._new = lambda: cls.remote(env, runner, episode_retries, seed)
        # An actor the cluster has no room for would sit pending with a chunk forever: never ask for more.
        fits = int(ray.cluster_resources().get("CPU", 1) / cpus)
        self.workers, self.actors = max(1, min(workers, fits)), []

    def take(self, chunks: int) -> list:
        while len(self.actors) < min(self.workers, max(1, chunks)):
            self.actors.append(self._new())
        return list(self.actors[: max(1, min(self.workers, chunks))])

    def replace(self, dead):
        import ray

        try:
            ray.kill(dead, no_restart=True)
        except Exception:
            pass
        fresh = self._new()
        self.actors[self.actors.index(dead)] = fresh
        return fresh

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


def _infra_result(prefix: str, task: Task, trial: int, policy: str, model: str, msg: str, attempts: int) -> dict:
    eid = episode_id(task, prefix, trial)
    return {"records": [placeholder_record(eid, task, policy, model, "infra_error", msg)],
            "meta": {"trial": trial, "attempts": attempts, "errors": [msg], "events": [], "progress": 0.0,
                     "tokens": {}, "infra_error": msg}}


def _write_chunk(store: TrajectoryStore, name: str, results: list[dict]) -> None:
    # The sidecar first: a shard listed in the manifest always has its events on disk.
    meta = {r["records"][0]["episode_id"]: r["meta"] for r in results}
    (store.root / "events").mkdir(parents=True, exist_ok=True)
    write_atomic(store.root / "events" / f"{name}.json", json.dumps(meta))
    store.write_shard("episodes", name, [rec for r in results for rec in r["records"]],
                      {"infra_errors": sum("infra_error" in m for m in meta.values())})


def read_events(root: str | Path) -> dict[str, dict]:
    """episode_id -> sidecar meta for every finished chunk of the store at root."""
    store = TrajectoryStore(Path(root))
    out: dict[str, dict] = {}
    for key in store.manifest()["shards"]:
        path = store.root / "events" / f"{key.split('/', 1)[1]}.json"
        if path.exists():
            out.update(json.loads(path.read_text()))
    return out


def load_episodes(root: str | Path, target: str | None = None) -> list[dict]:
    """Episode summaries (eval.metrics) of a store, joined with their sidecar events."""
    store = TrajectoryStore(Path(root))
    return episode_summaries(store.read_records("episodes"), read_events(root), target=target)


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
    trials: int = 1,
    perturbation: dict | None = None,
) -> dict:
    """Run `tasks` x `trials` with `policy` on `workers` Ray actors; write episodes under out_dir/name.
    Resumable: chunks already on disk are not re-run. Returns {"overall", "levels", "wall_s"}."""
    units = [(t, k) for t in tasks for k in range(trials)]
    stats = run_units(name, env, units, policy, runner, workers, Path(out_dir) / name, perturbation=perturbation,
                      chunk=chunk, progress=progress)
    eps = load_episodes(Path(out_dir) / name)
    wall = stats["wall_s"]
    result = {"overall": summarize(eps), "levels": per_level(eps), "wall_s": wall, "run": stats}
    result["overall"]["episodes_per_s"] = stats["episodes_run"] / wall if stats["episodes_run"] and wall else None
    return result
