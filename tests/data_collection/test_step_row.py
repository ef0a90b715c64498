"""StepRow, the typed trajectory row: the same fields as the Parquet schema, lossless both ways.

    python -m pytest -q tests/data_collection/test_step_row.py
"""
from __future__ import annotations

import dataclasses

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy
import pyarrow as pa

from data_collection.schema import FIELD_NAMES, TRAJECTORY_SCHEMA, StepRow, episode_rows, group_steps, rows_table, table_rows
from data_collection.store import TrajectoryStore
from envs.babyai import BabyAIEnv
from envs.registry import sample_tasks


def _rows(n: int = 3) -> list[StepRow]:
    env, rows = BabyAIEnv(), []
    for task in sample_tasks("babyai", ["BabyAI-GoToLocal-v0"], "train", n):
        rows += episode_rows(run_episode(env, ExpertPolicy(), task, RunnerConfig()), model="bot")
    return rows


def test_fields_are_the_schema_columns_in_order():
    assert FIELD_NAMES == tuple(TRAJECTORY_SCHEMA.names)
    assert [f.name for f in dataclasses.fields(StepRow)] == TRAJECTORY_SCHEMA.names


def test_rows_survive_a_table_and_a_shard_unchanged(tmp_path):
    made = _rows()
    rows = table_rows(rows_table(made))  # reward and latency_s are float32 columns: stored once, then exact
    assert all(dataclasses.replace(a, reward=b.reward, latency_s=b.latency_s) == b for a, b in zip(made, rows))
    assert table_rows(rows_table(rows)) == rows and len(rows) == len(made) > 3
    # the same table pyarrow builds from the rows as dicts
    assert rows_table(made).equals(pa.Table.from_pylist([r.to_dict() for r in made], schema=TRAJECTORY_SCHEMA))
    store = TrajectoryStore(tmp_path / "ds")
    store.write_shard("train", "shard-0", made)
    back = store.read_rows("train")
    assert back == rows and store.read_records("train") == [r.to_dict() for r in rows]
    assert back[0].chat_messages() and back[0].chat_tools() == []  # a text space offers no tools


def test_group_steps_orders_each_episode_by_step_in_first_seen_order():
    rows = _rows(2)
    shuffled = rows[::-1]
    episodes = group_steps(shuffled)
    assert [ep[0].episode_id for ep in episodes] == [rows[-1].episode_id, rows[0].episode_id]
    assert all([r.step for r in ep] == sorted(r.step for r in ep) for ep in episodes)
