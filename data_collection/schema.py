"""The trajectory record: one row per step. The project's central contract; change it deliberately
and bump SCHEMA_VERSION (readers refuse a mismatch instead of silently mis-reading). In memory a row
is a `StepRow` (typed, read by attribute); `TrajectoryStore.read_rows` / `table_rows` give them,
`episode_rows` makes them from an episode, `rows_table` stores them.

Version 2 (issue 3) appended, all nullable so writers of version-1 rows only need the bump:
`variant`, `base_level`, `base_request` (where a mission variant came from: a paraphrase or a
composed task keeps its base level and the base mission) and `error` (why an expert or model
policy gave up). Version-1 datasets are refused by name; re-collect them, or replay them into a
new dataset with `lam collect --policy gold --gold OLD_DIR` (the gold reader needs no version).

Version 3 (issue 16) keeps the conversation: `messages`, the exact chat messages the policy was
given for the step (first attempt, memory included), and `tools`, the OpenAI tools list of a tool
space ("" in text spaces), both JSON text per step; and `task_key`, the task's exact name (a BFCL
episode's entry id, e.g. "multi_turn_base_12"; "level/seed" where the environment names none).
Read them with `row.chat_messages()` / `row.chat_tools()`, never by parsing the columns by hand.
Per step, not once per episode with offsets: text spaces re-window their history (step t's
messages are not a prefix of step t+1's), and Parquet's dictionary encoding + zstd store a tools
list repeated on every step once per page. Measured on a 200-episode BabyAI GoToLocal expert
collect (train/, one shard, 1037 steps): v2 58,209 bytes; v3 114,560 at
zstd's default level, 81,491 (1.4x v2) at the level 9 data_collection/store.py now writes.
Version-2 datasets are refused by name; `lam data upgrade OLD NEW` converts a text-space (BabyAI)
dataset exactly (data_collection/upgrade.py says why, and why tool spaces must be re-collected).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from agent.episode import Episode

SCHEMA_VERSION = 3

TRAJECTORY_SCHEMA = pa.schema(
    [
        ("episode_id", pa.string()),
        ("step", pa.int32()),
        ("env", pa.string()),
        ("level", pa.string()),
        ("task_id", pa.string()),
        ("split", pa.string()),
        ("seed", pa.int64()),
        ("request", pa.string()),
        ("state", pa.string()),  # rendered text the policy saw before acting
        ("prev_feedback", pa.string()),  # feedback on the previous action, shown with `state`
        ("raw_output", pa.string()),  # policy output before grounding
        ("action", pa.string()),  # grounded action ("" if grounding failed on every try)
        ("valid", pa.bool_()),
        ("retries", pa.int32()),
        ("blocked", pa.bool_()),
        ("feedback", pa.string()),  # the environment's answer to `action`
        ("reward", pa.float32()),
        ("done", pa.bool_()),  # last step of the episode
        ("claimed_done", pa.bool_()),  # the agent said it finished
        ("verified_success", pa.bool_()),  # the environment verified success (at this step)
        ("episode_success", pa.bool_()),  # the environment's final verdict for the episode
        ("end_reason", pa.string()),
        ("policy", pa.string()),  # who chose this step's action: the episode's policy, except in a takeover
        ("model", pa.string()),
        ("episode_hash", pa.string()),  # identical episodes share it (de-duplication)
        ("code_version", pa.string()),
        ("created_at", pa.float64()),
        ("latency_s", pa.float32()),
        ("schema_version", pa.int32()),
        # -- version 2 --
        ("variant", pa.string()),  # "" for the level's own mission, else paraphrase | then | after | and
        ("base_level", pa.string()),  # the level a variant was derived from (== level when variant == "")
        ("base_request", pa.string()),  # the base level's own mission for this seed
        ("error", pa.string()),  # why the policy gave up (end_reason policy_error), else ""
        # -- version 3 --
        ("task_key", pa.string()),  # the task's exact name: BFCL entry id, else level/seed
        ("messages", pa.string()),  # JSON: the chat messages the policy was given (first attempt)
        ("tools", pa.string()),  # JSON: the OpenAI tools offered with them ("" in text spaces)
    ],
    # in every Parquet footer, so a reader can name a shard's version without reading its rows
    metadata={"lam_schema_version": str(SCHEMA_VERSION)},
)


@dataclass(slots=True)
class StepRow:
    """One row of TRAJECTORY_SCHEMA, read by attribute (`row.action`, not `row["action"]`): every
    reader and writer uses this type; Parquet shards (pyarrow tables) stay the storage. Fields are the
    schema's columns in order (checked below); the comments on TRAJECTORY_SCHEMA say what each holds.
    Defaults only make a test's hand-written row short: rows read from a shard have every column."""

    episode_id: str = ""
    step: int = 0
    env: str = ""
    level: str = ""
    task_id: str = ""
    split: str = ""
    seed: int = 0
    request: str = ""
    state: str = ""
    prev_feedback: str = ""
    raw_output: str = ""
    action: str = ""
    valid: bool = True
    retries: int = 0
    blocked: bool = False
    feedback: str = ""
    reward: float = 0.0
    done: bool = False
    claimed_done: bool = False
    verified_success: bool = False
    episode_success: bool = False
    end_reason: str = ""
    policy: str = ""
    model: str = ""
    episode_hash: str = ""
    code_version: str = ""
    created_at: float = 0.0
    latency_s: float = 0.0
    schema_version: int = SCHEMA_VERSION
    variant: str = ""
    base_level: str = ""
    base_request: str = ""
    error: str = ""
    task_key: str = ""
    messages: str = ""
    tools: str = ""

    def chat_messages(self) -> list[dict]:
        """The chat messages the policy was given for this step ([] for a step -1 placeholder row)."""
        return json.loads(self.messages) if self.messages else []

    def chat_tools(self) -> list[dict]:
        """The OpenAI tools offered with this step's messages ([] in text spaces)."""
        return json.loads(self.tools) if self.tools else []

    def to_dict(self) -> dict:
        return {n: getattr(self, n) for n in FIELD_NAMES}


FIELD_NAMES = tuple(f.name for f in fields(StepRow))
if FIELD_NAMES != tuple(TRAJECTORY_SCHEMA.names):  # one contract: the type and the columns cannot drift
    raise ImportError(f"StepRow fields differ from TRAJECTORY_SCHEMA: {set(FIELD_NAMES) ^ set(TRAJECTORY_SCHEMA.names)}")


def table_rows(table: pa.Table) -> list[StepRow]:
    """A table's rows as StepRows, built column by column (no per-row dict: cheaper than to_pylist)."""
    names = table.column_names
    cols = [table.column(n).to_pylist() for n in names]
    if tuple(names) == FIELD_NAMES:
        return [StepRow(*vals) for vals in zip(*cols)]
    return [StepRow(**dict(zip(names, vals))) for vals in zip(*cols)]  # a read of some columns only


def rows_table(rows: Iterable[StepRow]) -> pa.Table:
    """StepRows as a table of TRAJECTORY_SCHEMA, column by column."""
    rows = list(rows)
    return pa.table({n: [getattr(r, n) for r in rows] for n in FIELD_NAMES}, schema=TRAJECTORY_SCHEMA)


def group_steps(rows: Iterable[StepRow]) -> list[list[StepRow]]:
    """Rows grouped per episode, each sorted by step, in first-seen order."""
    by_id: dict[str, list[StepRow]] = {}
    for r in rows:
        by_id.setdefault(r.episode_id, []).append(r)
    return [sorted(v, key=lambda r: r.step) for v in by_id.values()]


@lru_cache(maxsize=1)
def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def episode_hash(ep: Episode) -> str:
    h = hashlib.sha1()
    h.update(f"{ep.task.level}\n{ep.request}\n".encode())
    for s in ep.steps:
        h.update(f"{s.state}\x00{s.action}\x01".encode())
    return h.hexdigest()[:20]


def episode_rows(
    ep: Episode, model: str = "", created_at: float | None = None, origin: dict | None = None, version: str | None = None
) -> list[StepRow]:
    """origin: the env's `variant_info()` (variant, base_level, base_request) where it has one."""
    created_at = time.time() if created_at is None else created_at
    digest, version = episode_hash(ep), version or code_version()
    origin = origin or {}
    variant, base_level = origin.get("variant", ""), origin.get("base_level", ep.task.level)
    base_request = origin.get("base_request", ep.request)
    n = len(ep.steps)
    return [
        StepRow(
            episode_id=ep.episode_id,
            step=s.step,
            env=ep.task.env,
            level=ep.task.level,
            task_id=ep.task.task_id,
            split=ep.task.split,
            seed=ep.task.seed,
            request=ep.request,
            state=s.state,
            prev_feedback=s.prev_feedback,
            raw_output=s.raw_output,
            action=s.action,
            valid=s.valid,
            retries=s.retries,
            blocked=s.blocked,
            feedback=s.feedback,
            reward=s.reward,
            done=i == n - 1,
            claimed_done=s.claimed_done,
            verified_success=s.verified_success,
            episode_success=ep.success,
            end_reason=ep.end_reason,
            policy=s.actor or ep.policy,  # per step: who chose the action (a takeover changes hands)
            model=model,
            episode_hash=digest,
            code_version=version,
            created_at=created_at,
            latency_s=s.latency_s,
            schema_version=SCHEMA_VERSION,
            variant=variant,
            base_level=base_level,
            base_request=base_request,
            error=ep.error,
            task_key=ep.task_key or ep.task.task_id,
            messages=json.dumps(s.messages, ensure_ascii=False),
            tools=json.dumps(s.tools, ensure_ascii=False) if s.tools else "",
        )
        for i, s in enumerate(ep.steps)
    ]
