"""What one collection batch is, as work for the rollout fleet (data_collection/fleet.py): run every
(index, task) through the episode runner and return one Arrow table of trajectory rows for the batch
plus a small outcome per episode; the driver (collector.py) decides what to keep. Episode ids are
deterministic in the task, so a re-run batch can never produce a second copy of an episode.

    fleet = Fleet(2, "babyai", runner, setup=partial(prepare, policy=spec))
    fleet.submit(partial(collect_batch, policy=spec, provenance=prov), [(0, task), (1, task)])
"""
from __future__ import annotations

from agent.episode import episode_id, run_episode
from data_collection.experts import SERVED_KINDS, build_collect_policy
from data_collection.schema import StepRow, episode_rows, rows_table
from envs.base import Task

# Episodes in a row that a model policy's server failed (each after its own retries): the server is
# down or refuses every request, so the batch stops there and the driver stops the collection.
SERVER_DOWN_STREAK = 8



def prepare(actor, policy: dict):
    """The actor's collection policy, built once (at actor start, so a bad spec fails the fleet's start)."""
    import json

    return actor.cached(("collect-policy", json.dumps(policy, sort_keys=True)), lambda: build_collect_policy(policy))


def collect_batch(actor, batch: list[tuple[int, Task]], attempt: int = 0, *, policy: dict, provenance: dict,
                  id_prefix: str = "") -> dict:
    """Run every (index, task); rows of all episodes in one table, in batch order. `id_prefix` keeps
    several attempts at one task apart (self-improvement trials)."""
    pol = prepare(actor, policy)
    uses_server = policy.get("kind") in SERVED_KINDS  # its policy_error means the server failed (not the expert)
    rows: list[StepRow] = []
    outcomes = []
    streak = 0
    for index, task in batch:
        if streak >= SERVER_DOWN_STREAK:
            break  # the rest would fail the same way: return early, the driver stops
        out = {"index": index, "level": task.level, "row_start": len(rows), "rows": 0, "steps": 0}
        try:
            ep = run_episode(actor.env, pol, task, actor.runner, episode_id=id_prefix + episode_id(task))
        except Exception as e:  # the environment itself crashed: counted, nothing to store
            outcomes.append({**out, "end_reason": "env_error", "success": False, "error": f"{type(e).__name__}: {e}"})
            streak = 0
            continue
        origin = actor.env.variant_info() if hasattr(actor.env, "variant_info") else None
        recs = episode_rows(ep, model=provenance["model"], origin=origin,
                            version=provenance["code_version"]) if ep.steps else []
        rows.extend(recs)
        outcomes.append({
            **out, "rows": len(recs), "steps": len(ep.steps), "success": ep.success, "end_reason": ep.end_reason,
            "hash": recs[0].episode_hash if recs else "", "error": ep.error,
            "server_failed": uses_server and ep.end_reason == "policy_error" and not ep.error.startswith("expert failed"),
        })
        streak = streak + 1 if outcomes[-1]["server_failed"] else 0
    return {"outcomes": outcomes, "table": rows_table(rows)}
