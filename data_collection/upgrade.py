"""`lam data upgrade OLD NEW`: a version-2 dataset as a version-3 one (data_collection/schema.py).

Exact for text spaces (BabyAI): a v2 row keeps everything the prompt was rendered from (request,
state, prev_feedback, the grounded actions of the episode), and collection renders with
agent/prompt.py at the runner's default history window and without memory, so re-rendering gives
the very messages the policy was given (tests/data_collection/test_upgrade.py compares it with a
fresh v3 collect of the same seeds).

Refused for tool spaces (BFCL): v2 kept neither the tools offered at each step nor the
conversation's tool-call ids and rejected outputs, so re-rendering would be a guess. Their recorded
actions can be re-run through the runner instead, which rebuilds the conversation for real:
`lam collect --env ENV --levels ... --policy gold --gold OLD --out NEW`.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from agent.episode import RunnerConfig
from agent.prompt import Turn, render_messages
from data_collection.schema import SCHEMA_VERSION, StepRow, group_steps, table_rows
from data_collection.store import MANIFEST, DatasetError, TrajectoryStore
from envs.base import Task, action_space_of

OLD_VERSION = 2
# what collection rendered v2 prompts with: the runner's defaults (the collector sets neither)
WINDOW = RunnerConfig().history_window


def upgrade_command(root: str | Path) -> str:
    return f"lam data upgrade {root} {Path(str(root).rstrip('/') + '-v3')}"


def _text_names(row: StepRow, old: Path) -> list[str]:
    """The action names of the row's environment, or a DatasetError where its space is not text."""
    from envs.registry import make_env

    env_name = row.env
    try:
        env = make_env(env_name)
        env.reset(Task(env_name, row.level, row.seed, row.split))  # some spaces exist only after reset
        space = action_space_of(env)
        getattr(env, "close", lambda: None)()
    except Exception as e:  # an env that cannot be built here cannot be re-rendered either
        raise DatasetError(f"{old}: cannot build environment {env_name!r} to re-render its prompts: {e}") from e
    if space.kind != "text":
        raise DatasetError(
            f"{old}: episodes of {env_name!r} act in a {space.kind} space; version 2 kept neither the tools nor the "
            f"tool-call conversation, so they cannot be re-rendered exactly. Re-run their recorded actions through "
            f"the runner instead: lam collect --env {env_name} --levels ... --policy gold --gold {old} --out NEW")
    return space.names


def upgrade_rows(rows: list[StepRow], names: dict[str, list[str]], window: int = WINDOW) -> list[StepRow]:
    """v2 rows (any order; the v3 fields at their defaults) -> v3 rows, episode by episode: each
    step's messages re-rendered."""
    out = []
    for steps in group_steps(rows):
        turns: list[Turn] = []
        for r in steps:
            r = dataclasses.replace(r, schema_version=SCHEMA_VERSION, task_key=r.task_id, tools="", messages="")
            if r.step >= 0:  # step -1: a placeholder row (no step taken), nothing was rendered
                turns.append(Turn(state=r.state, feedback=r.prev_feedback))
                r.messages = json.dumps(render_messages(r.request, turns, names[r.env], window), ensure_ascii=False)
                turns[-1].action = r.action  # as the runner records it: "" when grounding failed
            out.append(r)
    return out


def upgrade(old: str | Path, new: str | Path) -> dict:
    """Write NEW (must not exist) from OLD (a version-2 dataset); OLD is only read."""
    old, new = Path(old), Path(new)
    try:
        m = json.loads((old / MANIFEST).read_text())
        version = m["schema_version"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{old / MANIFEST}: not a readable lam dataset manifest ({e})") from e
    if version == SCHEMA_VERSION:
        raise DatasetError(f"{old} is already schema version {SCHEMA_VERSION}; nothing to upgrade")
    if version != OLD_VERSION:
        raise DatasetError(f"{old}: schema version {version}; only version {OLD_VERSION} upgrades; re-collect it, or "
                           f"replay it with `lam collect --policy gold --gold {old} --out NEW`")
    if new.exists() and any(new.iterdir()):
        raise DatasetError(f"{new} exists and is not empty; name a new directory")
    shards: dict[str, list[StepRow]] = {}
    for key in sorted(m["shards"]):
        path = old / f"{key}.parquet"
        try:
            shards[key] = table_rows(pq.read_table(path))  # v2 columns; the v3 fields keep their defaults
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read ({e}); `lam data repair {old}` first") from e
        bad = {r.schema_version for r in shards[key]} - {OLD_VERSION}
        if bad:
            raise DatasetError(f"{path}: rows of schema version {sorted(bad)} in a version-{OLD_VERSION} dataset")
    first = {r.env: r for rows in shards.values() for r in rows if r.step >= 0}
    envs = {r.env for rows in shards.values() for r in rows}
    names = {e: _text_names(first[e], old) for e in sorted(first)}  # refuses before anything is written
    store = TrajectoryStore(new)
    try:
        for key, rows in shards.items():
            subset, name = key.split("/", 1)
            info = {k: v for k, v in m["shards"][key].items() if k not in ("rows", "episodes")}
            store.write_shard(subset, name, upgrade_rows(rows, names), info=info)
        m3 = store.manifest()
        m3["meta"], m3["batches"] = m.get("meta", {}), m.get("batches", {})
        m3["meta"]["upgraded_from"] = {"path": str(old), "schema_version": OLD_VERSION, "history_window": WINDOW}
        store._save_manifest(m3)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)  # NEW was empty: a half-written upgrade is no dataset
        raise
    from data_collection.card import write_card

    write_card(store)
    return {"shards": len(shards), "rows": sum(len(r) for r in shards.values()), "envs": sorted(envs)}
