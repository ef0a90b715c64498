"""Self-improvement attempts: a model tries a fixed list of tasks, `trials` times each, and what it did
becomes a dataset written exactly as `lam collect` writes one: verified successes in train/, the rest
in failures/, duplicates (same states and actions) counted and not stored, a ledger entry per batch
in the manifest, and a dataset card. The pipeline's self-boosting stage calls it (cluster/pipeline.py):

    collect_attempts("runs/x/boost/data", "babyai", tasks, trials=2, policy_for_trial=lambda t: {...},
                     runner={"max_steps": 64}, workers=2)

Batch k of trial t covers task indices [t*T + a, t*T + b) of the list (T tasks); batches never cross a
trial, and episode ids carry the trial (`trial1-BabyAI-GoToLocal-v0-12`), so two trials' attempts at
one task stay two episodes. Interrupted, it resumes: batches already in the ledger are not re-run.
"""
from __future__ import annotations

import math
from collections import Counter
from functools import partial
from pathlib import Path

from data_collection.batch import collect_batch
from data_collection.card import write_card
from data_collection.collector import CollectionError, _accept, _commit, _Ledger, _sole_writer
from data_collection.experts import SERVED_KINDS, policy_model
from data_collection.fleet import Fleet
from data_collection.schema import code_version
from data_collection.store import TrajectoryStore
from envs.base import Task


def collect_attempts(out: str | Path, env: str, tasks: list[Task], trials: int, policy_for_trial, runner: dict,
                     workers: int, batch: int = 32, on_batch=None) -> dict:
    """Returns {"successes", "failures", "duplicates", "attempted"}: unique episodes stored in train/ and failures/.

    on_batch(chunk, result): every finished batch as the fleet returned it (a table of every episode's rows,
    identical ones too), before de-duplication: the online RL phase (training/rl.py) needs each group whole."""
    store = TrajectoryStore(Path(out))
    with _sole_writer(store.root):
        policies = [policy_for_trial(t) for t in range(trials)]
        # what the data is made of; where the model is served (base_url, api_key) may change on a resume
        config = {"env": env, "tasks": [t.task_id for t in tasks], "trials": trials, "runner": runner, "batch": batch,
                  "policies": [{k: v for k, v in p.items() if k not in ("base_url", "api_key")} for p in policies]}
        held = store.manifest()["meta"].get("config")
        if held is not None and held != config:
            raise CollectionError(f"{store.root} holds attempts made with another configuration; choose another directory")
        store.set_meta(config=config, env=env, policy=config["policies"][0], episodes_requested=None)
        ledger = _Ledger(store)
        done = set(ledger.taken)
        n = len(tasks)
        todo = [(t * n + a, t * n + min(a + batch, n)) for t in range(trials) for a in range(0, n, batch)]
        todo = [r for r in todo if r not in done]
        stats: Counter = Counter()
        fleet = Fleet(workers, env, runner, cpus=0.25 if policies[0].get("kind") in SERVED_KINDS else 1) if todo else None
        try:
            works = [partial(collect_batch, policy=p, id_prefix=f"trial{t}-",
                             provenance={"model": policy_model(p, ""), "code_version": code_version()})
                     for t, p in enumerate(policies)]
            while todo or (fleet and fleet.in_flight_tasks()):
                while todo and fleet.free_slots() > 0:
                    a, b = todo.pop(0)
                    fleet.submit(works[a // n], [(i, tasks[i % n]) for i in range(a, b)])
                for chunk, result in fleet.wait(timeout=1.0):
                    _write(store, ledger, chunk, result, stats)
                    if on_batch is not None:
                        on_batch(chunk, result)
        finally:
            if fleet is not None:
                fleet.close()
        store.set_meta(episodes_requested=ledger.kept)  # every attempt made: the card calls it complete
        write_card(store)
    kept_fail = sum(c["failures"] for c in ledger.levels.values())
    return {"successes": ledger.kept, "failures": kept_fail, "attempted": ledger.attempted,
            "duplicates": sum(c["duplicates"] for c in ledger.levels.values())}


def _write(store: TrajectoryStore, ledger: _Ledger, chunk: list, result: dict, stats: Counter) -> None:
    outcomes = result["outcomes"]
    batch = chunk[:len(outcomes)]  # a batch the model server stopped early keeps what it ran
    if batch:
        parts, entry, hashes = _accept(ledger, batch, result, math.inf)
        name = f"shard-{entry['first_index']:010d}"
        store.write_group(name, parts, {"train": {"batch": name}, "failures": {"batch": name}}, entry)
        _commit(ledger, entry, hashes, stats, result)
    if len(outcomes) < len(chunk):
        write_card(store)
        err = next((o["error"] for o in reversed(outcomes) if o.get("server_failed")), "")
        raise CollectionError(f"the model server failed {len(outcomes)} episodes in a row, stopped ({err}); "
                              f"{store.root} keeps every batch before; re-run to resume")
