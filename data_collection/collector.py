"""Collect environment-verified (request, state, action) trajectories with Ray collector actors.

    lam collect --env babyai --levels BabyAI-GoToLocal-v0 --episodes 20000 --workers 2 --out runs/data
    lam collect --env babyai --levels BabyAI-GoToLocal-v0 --variants paraphrase,then --episodes 5000 --out runs/evolved
    lam collect ... --resume          # after Ctrl-C, a crash, a full disk: continues to exactly N
    lam data repair runs/data         # a corrupt or missing shard: quarantine it, then --resume

What N (--episodes) counts: unique episodes the environment verified as successful, in train/.
Tasks come as a stream (envs.registry.task_at: levels cycled, a fresh seed per index) and the driver
draws more until N unique verified successes exist, so failures, time-outs, crashes and duplicates
never leave the count short. Everything else is labelled, not lost:
  failures/    episodes the environment did not verify (end_reason says why: step_limit,
               claimed_done, env_terminated, time_limit, policy_error with the reason in `error`)
  duplicates   same level, mission, states and actions as a stored episode: counted, not stored
  surplus      episodes past the N-th in task order (run in parallel): discarded, seeds left unused

Exactly once: a batch covers a contiguous range of task indices; its shards and its ledger entry
(range and counts per level) enter the manifest in one atomic update. --resume removes orphan
files, reads the ledger and the stored episode hashes, and runs only indices no batch covered.
It checks all of that (settings, every shard) before it writes anything: a refused run changes
nothing. A model policy's server is checked first (GET /models); when it fails SERVER_DOWN_STREAK
episodes in a row the run stops, keeping the batches before, instead of burning the attempt cap.

First N: batches are accepted in index order (one that finishes early waits for those before
it), so train/ holds the first N unique verified episodes of the task stream, whatever the number
of workers, actor deaths or interruptions: an interrupted and resumed collection stores the same
episodes as an uninterrupted one (up to time-limit verdicts, which depend on the machine).
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_collection.batch import SERVER_DOWN_STREAK, collect_batch, prepare
from data_collection.collect_config import CollectConfig
from data_collection.experts import SERVED_KINDS, check_model_endpoint, policy_model
from data_collection.fleet import Fleet
from data_collection.schema import code_version
from data_collection.store import LEVEL_COUNTERS, TrajectoryStore
from envs.registry import get_env_spec, task_at

NO_LIMIT_STEPS = 100_000  # max_steps None: the environment's own limit ends the episode first


class CollectionError(RuntimeError):
    """Collection cannot reach its target as configured; what is on disk is complete and resumable."""


# A resumed collection must draw the same task stream with the same policy.
_FIXED = ("env", "levels", "split", "base_seed", "policy", "max_steps", "time_limit_s")


@contextmanager
def _hold_sigint():
    """Ctrl-C while a batch is being written takes effect right after it: no half-written batch."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if caught:
        raise KeyboardInterrupt


class _Ledger:
    """What the dataset already holds: covered index ranges, stored hashes, counts per level."""

    def __init__(self, store: TrajectoryStore) -> None:
        m = store.manifest()
        batches = m.get("batches", {})
        self.taken = sorted((b["first_index"], b["end_index"]) for b in batches.values())
        self.written_end = max((b for _, b in self.taken), default=0)  # past the last written batch
        self.levels: dict[str, Counter] = {}
        for b in batches.values():
            for level, counts in b["levels"].items():
                self.levels.setdefault(level, Counter()).update(counts)
        self.kept = sum(c["kept"] for c in self.levels.values())
        self.seen_train = self._hashes(store, "train")
        self.seen_fail = self._hashes(store, "failures")
        if len(self.seen_train) != self.kept:
            raise CollectionError(
                f"{store.root}: the manifest counts {self.kept} kept episodes but train/ holds {len(self.seen_train)} "
                f"unique ones; the dataset was changed by hand; `lam data repair {store.root}` quarantines the "
                "shards that disagree, then --resume re-collects them"
            )

    @staticmethod
    def _hashes(store: TrajectoryStore, subset: str) -> set[str]:
        if not store.shard_paths(subset):
            return set()
        return set(store.read(subset, columns=["episode_hash"]).column(0).to_pylist())  # validates every shard

    @property
    def attempted(self) -> int:
        return sum(c["attempted"] for c in self.levels.values())

    def success_rate(self) -> float:
        return (sum(c["kept"] for c in self.levels.values()) + 1) / (self.attempted + 1)

    def next_range(self, size: int) -> tuple[int, int]:
        """The first `size` (or fewer, up to the next taken range) indices no batch has taken."""
        start = 0
        for a, b in self.taken:
            if start < a:
                break
            start = max(start, b)
        nxt = min((a for a, _ in self.taken if a >= start), default=start + size)
        rng = (start, min(start + size, nxt))
        self.taken = sorted(self.taken + [rng])
        return rng


def _resolve(cfg: CollectConfig):
    spec = get_env_spec(cfg.env)
    levels = spec.with_variants(cfg.levels, cfg.variants)
    spec.check_levels(levels)
    limit = spec.default_time_limit_s if cfg.time_limit_s is None else cfg.time_limit_s
    hanging = [lvl for lvl in levels if lvl in spec.needs_time_limit]
    if hanging and not limit:
        raise ValueError(f"{hanging[0]} needs a per-episode time limit (its expert can loop forever); pass --time-limit-s 30")
    return spec, levels, limit


def _meta(cfg: CollectConfig, levels: list[str], limit: float | None) -> dict:
    d = cfg.model_dump()
    d["levels"], d["time_limit_s"] = levels, limit or None
    d["policy"] = {k: v for k, v in cfg.policy.items() if k != "api_key"}  # never store a secret
    return {k: d[k] for k in _FIXED}


def _open(store: TrajectoryStore, cfg: CollectConfig, levels: list[str], limit, resume: bool) -> tuple[_Ledger, int]:
    """Check everything (settings, every shard, the count), then write: a refused run changes nothing."""
    m = store.manifest()
    meta = _meta(cfg, levels, limit)
    exists = bool(m["shards"] or m.get("batches"))
    if exists:
        if not resume:
            raise FileExistsError(f"{store.root} already holds a dataset; pass --resume to continue it or choose another --out")
        held = m["meta"].get("config", {})
        for key, want in meta.items():
            if key in held and held[key] != want:
                raise ValueError(f"--resume with {key}={want!r} but {store.root} was collected with {held[key]!r}; "
                                 "use the same settings or a new --out")
    ledger = _Ledger(store)  # reads every listed shard: a corrupt or missing one stops us here
    if ledger.kept > cfg.episodes:
        raise ValueError(f"{cfg.out} already holds {ledger.kept} episodes, more than --episodes {cfg.episodes}")
    orphans = len(store.remove_orphans()) if exists else 0
    store.set_meta(config=meta, episodes_requested=cfg.episodes, env=cfg.env, levels=levels, policy=meta["policy"])
    return ledger, orphans


def _accept(ledger: _Ledger, batch: list, result: dict, target: int) -> tuple[dict, dict, dict]:
    """Decide per episode (keep / failure / duplicate / error / surplus) in index order.
    Returns the parts to write, the ledger entry, and the hashes to commit after the write."""
    first, end = batch[0][0], batch[-1][0] + 1
    kept_idx, fail_idx = [], []
    new_train, new_fail = set(), set()
    levels: dict[str, Counter] = {}
    reasons: Counter = Counter()
    kept = ledger.kept
    for o in result["outcomes"]:
        # Surplus: past the N-th in task order, this index and the rest stay untaken. Inside a hole
        # left by `lam data repair` (written batches after it) failures are still stored, as the
        # batch stored them before, and only a success past N is surplus.
        if kept >= target and (o["index"] >= ledger.written_end or o["success"]):
            end = o["index"]
            break
        c = levels.setdefault(o["level"], Counter({k: 0 for k in LEVEL_COUNTERS}))
        c["attempted"] += 1
        c["success"] += bool(o["success"])
        reasons[o["end_reason"]] += 1
        rows = np.arange(o["row_start"], o["row_start"] + o["rows"])
        if o["rows"] == 0:
            c["errors"] += 1
        elif o["success"]:
            if o["hash"] in ledger.seen_train or o["hash"] in new_train:
                c["duplicates"] += 1
            else:
                new_train.add(o["hash"])
                kept_idx.append(rows)
                c["kept"] += 1
                kept += 1
        elif o["hash"] in ledger.seen_fail or o["hash"] in new_fail:
            c["duplicates"] += 1
        else:
            new_fail.add(o["hash"])
            fail_idx.append(rows)
            c["failures"] += 1
            c["time_limit"] += o["end_reason"] == "time_limit"
            c["policy_error"] += o["end_reason"] == "policy_error"
    table: pa.Table = result["table"]
    take = lambda idx: table.take(pa.array(np.concatenate(idx) if idx else np.zeros(0, np.int64)))  # noqa: E731
    entry = {"first_index": first, "end_index": end, "levels": {k: dict(v) for k, v in levels.items()},
             "end_reasons": dict(reasons), "pid": result["pid"], "node_id": result.get("node_id", ""),
             "created_at": time.time()}
    return {"train": take(kept_idx), "failures": take(fail_idx)}, entry, {"train": new_train, "failures": new_fail}


@contextmanager
def _sole_writer(root: Path):
    """One collector per dataset directory: a second one would race the first's manifest."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(f"another lam collect is writing {root}; wait for it or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def collect(cfg: CollectConfig, resume: bool = False, progress: bool = True, on_batch=None) -> dict:
    """Collect until train/ holds exactly cfg.episodes unique verified episodes; returns stats.
    `on_batch(stats, fleet)` is called after every written batch (tests use it to kill actors)."""
    spec, levels, limit = _resolve(cfg)
    check_model_endpoint(cfg.policy)  # a dead URL or unknown model: one line now, not hours of retries
    with _sole_writer(Path(cfg.out)):
        return _collect(cfg, spec, levels, limit, resume, progress, on_batch)


def _collect(cfg: CollectConfig, spec, levels: list[str], limit, resume: bool, progress: bool, on_batch) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from data_collection.card import write_card

    store = TrajectoryStore(Path(cfg.out))
    ledger, orphans = _open(store, cfg, levels, limit, resume)
    target = cfg.episodes
    max_attempts = cfg.max_attempts or 20 * target + 1000
    stats = Counter({k: 0 for k in ("episodes", "kept_this_run", "failures", "duplicates", "dropped_time_limit",
                                     "policy_errors", "env_errors", "steps", "batches")})
    t0 = time.perf_counter()
    busy = cpu = 0.0
    process_cpu: dict[int, float] = {}  # actor pid -> its CPU time so far (for bench/collect.py)
    fleet = None
    try:
        if ledger.kept < target:
            runner = {"max_steps": cfg.max_steps or NO_LIMIT_STEPS, "time_limit_s": limit or None}
            provenance = {"model": policy_model(cfg.policy, spec.expert_version), "code_version": code_version(),
                          "niceness": os.getpriority(os.PRIO_PROCESS, 0)}
            # A model policy mostly waits on HTTP: a quarter CPU each lets many share the cores.
            fleet = Fleet(cfg.workers, cfg.env, runner, cpus=0.25 if cfg.policy.get("kind") in SERVED_KINDS else 1,
                          depth=cfg.depth, niceness=provenance["niceness"], setup=partial(prepare, policy=cfg.policy))
            work = partial(collect_batch, policy=cfg.policy, provenance=provenance)
        actors_ready_s = time.perf_counter() - t0
        columns = [TextColumn("collect {task.fields[out]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[rate]:.0f} episodes/s, {task.fields[extra]}")]
        with Progress(*columns, disable=not progress) as bar:
            job = bar.add_task("collect", total=target, completed=ledger.kept, out=cfg.out, rate=0.0, extra="")
            t_run = time.perf_counter()
            waiting: list = []  # finished batches behind one still running
            down = 0  # model-server failures in a row, in task order
            while ledger.kept < target:
                while fleet.free_slots() > 0:
                    size = _next_batch_size(cfg, ledger, fleet.in_flight_tasks() + sum(len(b) for b, _ in waiting), target)
                    if size == 0:
                        break
                    if ledger.attempted + fleet.in_flight_tasks() >= max_attempts:
                        break
                    a, b = ledger.next_range(size)
                    fleet.submit(work, [(i, task_at(cfg.env, levels, cfg.split, i, cfg.base_seed)) for i in range(a, b)])
                done = fleet.wait(timeout=1.0)
                if not done and fleet.in_flight_tasks() == 0:
                    write_card(store)  # what was collected is complete and described
                    raise CollectionError(
                        f"only {ledger.kept} of {target} unique verified episodes after {ledger.attempted} tasks "
                        f"({100 * ledger.kept / max(1, ledger.attempted):.0f}% kept); the policy fails too often here "
                        f"(see `lam data stats {cfg.out}`); raise --max-attempts to keep trying"
                    )
                waiting = sorted(waiting + done, key=lambda d: d[0][0][0])
                floor = fleet.lowest_in_flight()
                ready = [d for d in waiting if d[0][0][0] < floor]  # in index order ("First N" above)
                waiting = waiting[len(ready):]
                for batch, result in ready:
                    if ledger.kept >= target:
                        break
                    every = result["outcomes"]
                    cut, down = _server_down(every, down)
                    # Keep what came before the run of server failures; its tasks stay untaken for --resume.
                    batch, result = batch[:len(every[:cut])], dict(result, outcomes=every[:cut])
                    if batch:
                        parts, entry, hashes = _accept(ledger, batch, result, target)
                        name = f"shard-{entry['first_index']:010d}"
                        with _hold_sigint():
                            store.write_group(name, parts, {"train": {"batch": name}, "failures": {"batch": name}}, entry)
                        _commit(ledger, entry, hashes, stats, result)
                    if cut is not None:
                        write_card(store)
                        raise CollectionError(
                            f"the model server failed {SERVER_DOWN_STREAK} episodes in a row, stopped "
                            f"({next(o['error'] for o in reversed(every) if o.get('server_failed'))}); "
                            f"{cfg.out} holds {ledger.kept} of {target} episodes, every shard complete; "
                            "when the server is back, re-run with --resume")
                    busy, cpu = busy + result["busy_s"], cpu + result["cpu_s"]
                    process_cpu[result["pid"]] = result["process_cpu_s"]
                    elapsed = time.perf_counter() - t_run
                    bar.update(job, completed=ledger.kept, rate=stats["episodes"] / max(elapsed, 1e-9),
                               extra=f"{stats['failures']} failures, {stats['duplicates']} duplicates")
                    if on_batch:
                        on_batch(dict(stats, kept=ledger.kept), fleet)
    finally:
        if fleet is not None:
            fleet.close()
    wall = time.perf_counter() - t0
    write_card(store)
    out = dict(stats)
    out.update(requested=target, kept=ledger.kept, wall_s=wall, episodes_per_s=stats["episodes"] / max(wall, 1e-9),
               steps_per_s=stats["steps"] / max(wall, 1e-9), orphans_removed=orphans, out=str(cfg.out),
               actors_ready_s=actors_ready_s,
               workers=cfg.workers, actor_busy_s=busy, actor_cpu_s=cpu, actor_process_cpu_s=sum(process_cpu.values()),
               actor_restarts=fleet.restarts if fleet else 0, actors_replaced=fleet.replaced if fleet else 0,
               batches_retried=fleet.retried if fleet else 0)
    return out


def _server_down(outcomes: list[dict], streak: int) -> tuple[int | None, int]:
    """Where, in this batch, the run of model-server failures that reaches SERVER_DOWN_STREAK
    begins (None: it is not reached), and the run's length after the batch. `streak` carries the
    run over from the batches before, in task order."""
    start = 0
    for i, o in enumerate(outcomes):
        if not o.get("server_failed"):
            streak = 0
            continue
        start = i if streak == 0 else start
        streak += 1
        if streak >= SERVER_DOWN_STREAK:
            return start, streak
    return None, streak


def _next_batch_size(cfg: CollectConfig, ledger: _Ledger, pending: int, target: int) -> int:
    """Full batches while far from N; near the end just enough (at the success rate seen so far)
    to finish, spread over the workers, so little is wasted as surplus."""
    rate = ledger.success_rate()
    need = target - ledger.kept - pending * rate
    if need <= 0:
        return 0
    return int(min(cfg.shard_episodes, max(8, math.ceil(need / rate / max(1, cfg.workers)))))


def _commit(ledger: _Ledger, entry: dict, hashes: dict, stats: Counter, result: dict) -> None:
    ledger.seen_train |= hashes["train"]
    ledger.seen_fail |= hashes["failures"]
    for level, counts in entry["levels"].items():
        ledger.levels.setdefault(level, Counter()).update(counts)
        stats["kept_this_run"] += counts["kept"]
        stats["episodes"] += counts["attempted"]
        stats["failures"] += counts["failures"]
        stats["duplicates"] += counts["duplicates"]
        stats["dropped_time_limit"] += counts["time_limit"]
        stats["policy_errors"] += counts["policy_error"]
        stats["env_errors"] += counts["errors"]
    ledger.kept = sum(c["kept"] for c in ledger.levels.values())
    ledger.written_end = max(ledger.written_end, entry["end_index"])
    stats["steps"] += sum(o["steps"] for o in result["outcomes"] if o["index"] < entry["end_index"])
    stats["batches"] += 1
