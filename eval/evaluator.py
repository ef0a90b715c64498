"""Evaluation: tasks x trials through one policy, on the one rollout fleet (data_collection/fleet.py).

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
import time
from dataclasses import dataclass
from pathlib import Path

from agent.episode import episode_id, run_episode
from agent.runner_config import RunnerConfig, wire
from data_collection.atomic_file import write_atomic
from agent.policy_factory import build_policy
from data_collection.experts import check_model_endpoint  # noqa: F401  (re-exported: lam eval and the suites check first)
from data_collection.fleet import Fleet
from data_collection.schema import StepRow, code_version, episode_rows, table_rows
from data_collection.store import TrajectoryStore
from envs.base import Task
from eval.metrics import Summary, episode_summaries
from eval.perturb import PerturbedEnv

TRIAL_SEED_STRIDE = 1_000_003  # trial k runs the policy with seed + k * stride: trials differ, re-runs don't
POLICY_NAMES = {"expert": "expert", "random": "random", "prefix-expert": "prefix-expert", "model": "model"}


def placeholder_row(eid: str, task: Task, policy: str, model: str, end_reason: str, error: str = "") -> StepRow:
    """The one row of an episode that took no step (crashed at reset, timed out in the expert's
    setup, or failed on infrastructure): step -1, so it is counted but has no action to replay.
    Every other column keeps its empty value ("", 0, False)."""
    return StepRow(episode_id=eid, step=-1, env=task.env, level=task.level, task_id=task.task_id, split=task.split,
                   seed=task.seed, valid=False, done=True, end_reason=end_reason, policy=policy, model=model,
                   code_version=code_version(), created_at=time.time(), base_level=task.level, error=error[:500])


@dataclass
class EvalChunk:
    """One chunk of an evaluation, as work for the rollout fleet (`eval_chunk`)."""

    name: str  # its shard: episodes/<name>.parquet
    units: list  # [(task, trial)]
    id_prefix: str
    policy: dict
    perturbation: dict | None = None
    episode_retries: int = 2
    seed: int = 0
    runner: dict | None = None  # the runner's settings for this chunk (an ablation arm); None: the fleet's

    def __len__(self) -> int:
        return len(self.units)


def eval_chunk(actor, c: EvalChunk, attempt: int = 0) -> dict:
    """[(task, trial)] -> {"results": [{"rows": [StepRow...], "meta": {...}}]}, one per unit, in order. One actor
    serves every variant of a suite: policies are built once per (spec, trial), environments per perturbation."""
    key = json.dumps(c.perturbation or {}, sort_keys=True)
    env = actor.cached(("perturbed", key), lambda: PerturbedEnv(actor.env, c.perturbation, seed=c.seed))
    die_at = _death(c, attempt)
    runner = actor.runner if c.runner is None else actor.cached(
        ("runner", json.dumps(c.runner, sort_keys=True)), lambda: RunnerConfig(**c.runner))
    out = []
    for i, (task, trial) in enumerate(c.units):
        if i == die_at:
            os._exit(17)  # the actor_death fault: this worker process dies mid-chunk (OOM kill, lost node)
        out.append(_run_one(actor, env, task, trial, c, attempt, runner))
    return {"results": out}


def _death(c: EvalChunk, attempt: int) -> int | None:
    p = c.perturbation or {}
    if p.get("kind") != "actor_death" or not c.units:
        return None
    rng = random.Random(f"{c.seed}/death/{c.id_prefix}/{c.units[0][0].task_id}/{c.units[0][1]}/{attempt}")
    return rng.randrange(len(c.units)) if rng.random() < float(p.get("p", 0.0)) else None


def _policy(actor, spec: dict, trial: int):
    seed = int(spec.get("seed", 0)) + trial * TRIAL_SEED_STRIDE
    return actor.cached(("eval-policy", json.dumps(spec, sort_keys=True), trial),
                        lambda: build_policy({**spec, "seed": seed}, on_crash="fail_episode"))


def _run_one(actor, env: PerturbedEnv, task: Task, trial: int, c: EvalChunk, chunk_attempt: int,
             runner: RunnerConfig) -> dict:
    policy, eid, model = _policy(actor, c.policy, trial), episode_id(task, c.id_prefix, trial), c.policy.get("model", "")
    errors: list[str] = []
    for attempt in range(c.episode_retries + 1):
        env.begin_episode(trial, f"{chunk_attempt}.{attempt}")
        tokens0 = dict(policy.usage)
        try:
            ep = run_episode(env, policy, task, runner, episode_id=eid)
        except Exception as e:  # the environment (or something under it) broke: not the agent's doing
            errors.append(f"{type(e).__name__}: {e}"[:300])
            continue
        if ep.end_reason == "policy_error":  # the model server failed after the policy's own retries
            errors.append(ep.error[:300])
            continue
        tokens = {k: v - tokens0.get(k, 0) for k, v in policy.usage.items()}
        origin = getattr(env, "variant_info", None)  # mission variants (envs/babyai_variants.py)
        rows = (episode_rows(ep, model=model, **({"origin": origin()} if origin else {})) if ep.steps
                else [placeholder_row(eid, task, policy.name, model, ep.end_reason, ep.error)])
        meta = {"trial": trial, "attempts": attempt + 1, "errors": errors, "events": env.events,
                "progress": env.progress, "tokens": tokens, "policy_crash": policy.crash}
        if runner.harness_off:  # what the whole harness would have refused (agent/episode.py)
            meta.update(unsafe=ep.unsafe_actions, ungrounded=sum(s.ungrounded for s in ep.steps))
        if getattr(policy, "planted", None) is not None:  # agent/planted.py: a false claim planted here
            meta["planted"] = bool(policy.planted)
        return {"rows": rows, "meta": meta}
    rows = [placeholder_row(eid, task, policy.name, model, "infra_error", errors[-1])]
    meta = {"trial": trial, "attempts": c.episode_retries + 1, "errors": errors, "events": [],
            "progress": 0.0, "tokens": {}, "infra_error": errors[-1] if errors else "unknown"}
    return {"rows": rows, "meta": meta}


def _fingerprint(env: str, units: list[tuple[Task, int]], policy: dict, runner: dict, perturbation: dict | None,
                 chunk: int) -> dict:
    # base_url and api_key are where the model is, not what is evaluated: a resumed run may use a new port.
    pol = {k: v for k, v in policy.items() if k not in ("base_url", "api_key")}
    tasks = [f"{t.task_id}#{k}" for t, k in units]
    return {"env": env, "policy": pol, "runner": runner, "perturbation": perturbation or {"kind": "none"},
            "chunk": chunk, "units": len(units), "first": tasks[:1], "last": tasks[-1:]}


def run_units(name: str, env: str, units: list[tuple[Task, int]], policy: dict, runner: RunnerConfig | dict,
              workers: int, root: str | Path, *, perturbation: dict | None = None, chunk: int = 8, progress: bool = True,
              episode_retries: int = 2, chunk_retries: int = 2, chunk_timeout_s: float | None = None,
              seed: int = 0, pool: Fleet | None = None) -> dict:
    """Run every (task, trial) in `units` on `workers` rollout actors into the store at `root`, one shard
    per chunk as it finishes. Chunks already on disk are skipped. Returns run statistics (wall time,
    retries, deaths). `pool`: a fleet (`eval_fleet`) to use and keep instead of starting and stopping one."""
    from rich.console import Console
    from rich.progress import Progress

    store = TrajectoryStore(Path(root))
    store.root.mkdir(parents=True, exist_ok=True)
    manifest = store.manifest()
    runner = wire(runner)  # the fingerprint holds the fields set, as it always has: old runs still resume
    fp = _fingerprint(env, units, policy, runner, perturbation, chunk)
    old = manifest["meta"].get("fingerprint")
    if manifest["shards"] and old is not None and old != fp:
        raise ValueError(f"{root} holds a different evaluation (env, policy, runner, tasks or chunk size "
                         f"differ); choose another --out")
    store.set_meta(fingerprint=fp, name=name)
    done = {k.split("/", 1)[1] for k in manifest["shards"] if k.startswith("episodes/")}
    chunks = [(f"chunk-{i // chunk:05d}", units[i : i + chunk]) for i in range(0, len(units), chunk)]
    # the runner travels with each chunk: a shared fleet (`pool`) serves arms with other settings
    todo = [EvalChunk(n, c, name, policy, perturbation, episode_retries, seed, runner)
            for n, c in chunks if n not in done]
    stats = {"episodes": len(units), "episodes_run": sum(len(c) for c in todo), "chunks": len(chunks),
             "chunks_run": len(todo), "actor_deaths": 0, "chunk_retries": 0, "wall_s": 0.0}
    if not todo:
        return stats
    own = pool is None
    fleet = pool or eval_fleet(env, runner, policy, workers)
    fleet.tries, fleet.chunk_timeout_s = chunk_retries + 1, chunk_timeout_s
    deaths0, retries0 = fleet.failures, fleet.retried
    t0 = time.perf_counter()
    try:
        fleet.grow(len(todo))
        with Progress(console=Console(stderr=True), disable=not progress) as bar:  # stdout: results only
            job = bar.add_task(f"eval {name}", total=len(units), completed=len(units) - stats["episodes_run"])
            queue, running = list(todo), 0
            while queue or running:
                while queue and fleet.free_slots() > 0:
                    fleet.submit(eval_chunk, queue.pop(0))
                    running += 1
                for c, out in fleet.wait(timeout=None):
                    running -= 1
                    _write_chunk(store, c.name, out["results"])
                    bar.update(job, advance=len(c))
    finally:
        stats["actor_deaths"], stats["chunk_retries"] = fleet.failures - deaths0, fleet.retried - retries0
        if own:
            fleet.close()
    stats["wall_s"] = time.perf_counter() - t0
    return stats


def eval_fleet(env: str, runner: RunnerConfig | dict, policy: dict, workers: int) -> Fleet:
    """The rollout fleet an evaluation runs on (one per suite: every variant shares it). Ray does not
    restart its actors, so every death is counted; a chunk whose actor died is re-run on a fresh one,
    and one that failed every time is written as infrastructure errors, never dropped."""
    # model workers mostly wait on HTTP: a quarter CPU each
    return Fleet(workers, env, wire(runner), cpus=0.25 if policy.get("kind") == "model" else 1, depth=1, ray_restarts=0,
                 on_give_up=_infra_results, start=0)


def _infra_results(c: EvalChunk, error: BaseException, tries: int) -> dict:
    msg = f"actor died {tries} times running this chunk: {type(error).__name__}"
    pol_name = POLICY_NAMES.get(c.policy.get("kind", "expert"), c.policy.get("kind", "?"))
    return {"results": [_infra_result(c.id_prefix, t, k, pol_name, c.policy.get("model", ""), msg, tries)
                        for t, k in c.units]}


def _infra_result(prefix: str, task: Task, trial: int, policy: str, model: str, msg: str, attempts: int) -> dict:
    """An episode the infrastructure never let run (its chunk's actor died every time): counted, not dropped."""
    eid = episode_id(task, prefix, trial)
    return {"rows": [placeholder_row(eid, task, policy, model, "infra_error", msg)],
            "meta": {"trial": trial, "attempts": attempts, "errors": [msg], "events": [], "progress": 0.0,
                     "tokens": {}, "infra_error": msg}}


def _write_chunk(store: TrajectoryStore, name: str, results: list[dict]) -> None:
    # The sidecar first: a shard listed in the manifest always has its events on disk.
    meta = {r["rows"][0].episode_id: r["meta"] for r in results}
    (store.root / "events").mkdir(parents=True, exist_ok=True)
    write_atomic(store.root / "events" / f"{name}.json", json.dumps(meta))
    store.write_shard("episodes", name, [row for r in results for row in r["rows"]],
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
    return [e for part in iter_episodes(root, target) for e in part]


def iter_episodes(root: str | Path, target: str | None = None):
    """Episode summaries shard by shard (an episode never spans two): a store of any size in the memory of one chunk."""
    store = TrajectoryStore(Path(root))
    for path in store.shard_paths("episodes"):
        events = store.root / "events" / f"{path.stem}.json"
        yield episode_summaries(table_rows(store.read_shard(path)),
                                json.loads(events.read_text()) if events.exists() else {}, target=target)


def evaluate(
    name: str,
    env: str,
    tasks: list[Task],
    policy: dict,
    runner: RunnerConfig | dict,
    workers: int,
    out_dir: str | Path,
    chunk: int = 8,
    progress: bool = True,
    trials: int = 1,
    perturbation: dict | None = None,
) -> dict:
    """Run `tasks` x `trials` with `policy` on `workers` rollout actors; write episodes under out_dir/name.
    Resumable: chunks already on disk are not re-run. Returns {"overall", "levels", "wall_s"}; the metrics
    are computed shard by shard, so memory does not grow with the number of episodes."""
    units = [(t, k) for t in tasks for k in range(trials)]
    stats = run_units(name, env, units, policy, runner, workers, Path(out_dir) / name, perturbation=perturbation,
                      chunk=chunk, progress=progress)
    overall, levels = Summary(), {}
    for part in iter_episodes(Path(out_dir) / name):
        for e in part:
            overall.add(e)
            levels.setdefault(e["level"], Summary()).add(e)
    wall = stats["wall_s"]
    result = {"overall": overall.result(), "levels": {lvl: m.result() for lvl, m in sorted(levels.items())},
              "wall_s": wall, "run": stats}
    result["overall"]["episodes_per_s"] = stats["episodes_run"] / wall if stats["episodes_run"] and wall else None
    return result
