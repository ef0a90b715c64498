"""Schema v3 (issue 16 item 1): the record keeps the exact conversation the policy was given, every
episode names its task exactly, and version-2 datasets are refused by name and upgraded exactly
where re-rendering is exact (text spaces)."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.episode import RunnerConfig, run_episode
from agent.policy_factory import build_policy
from cluster.cli import main
from data_collection.schema import TRAJECTORY_SCHEMA, episode_rows, rows_table, table_rows
from data_collection.store import MANIFEST, TrajectoryStore
from envs.base import Task, action_space_of
from envs.registry import make_env

V3_COLUMNS = ("task_key", "messages", "tools")


class Recording:
    """The expert, remembering the messages and tools of each step's first attempt."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.seen = inner, inner.name, {}

    def begin(self, env, task):
        self.inner.begin(env, task)

    def act(self, messages, env, step, attempt):
        if attempt == 0:
            space = action_space_of(env)
            self.seen[step] = (json.loads(json.dumps(messages)), list(space.tools) if space.kind == "tools" else [])
        return self.inner.act(messages, env, step, attempt)


def _record(env_name: str, task: Task):
    env = make_env(env_name)
    policy = Recording(build_policy({"kind": "expert"}))
    ep = run_episode(env, policy, task, RunnerConfig(max_steps=40))
    return ep, episode_rows(ep), policy.seen


# issue 16 item 1
def test_babyai_records_keep_the_exact_messages_the_policy_was_given():
    ep, rows, seen = _record("babyai", Task("babyai", "BabyAI-GoToLocal-v0", 5))
    assert ep.success and len(rows) == len(seen) > 2
    for r in rows:
        assert r.chat_messages() == seen[r.step][0]
        assert r.chat_tools() == [] and r.tools == ""
        assert r.task_key == "BabyAI-GoToLocal-v0/5"
    table = rows_table(rows)  # the columns are in the schema
    assert [r.chat_messages() for r in table_rows(table)] == [seen[s][0] for s in sorted(seen)]


# issue 16 item 1
def test_bfcl_records_keep_messages_tools_and_the_entry_id():
    task = Task("bfcl", "multi_turn_base", 3, "all")
    ep, rows, seen = _record("bfcl", task)
    assert ep.success and len(rows) == len(seen) >= 2
    for r in rows:
        msgs, tools = seen[r.step]
        assert r.chat_messages() == msgs and r.chat_tools() == tools and tools
        assert r.task_key == "multi_turn_base_3"  # BFCL's own entry id, not level/seed
    # the conversation grows: a later step's prompt holds the earlier tool calls and their results
    last = rows[-1].chat_messages()
    assert any(m.get("tool_calls") for m in last) and any(m["role"] == "tool" for m in last)


def _collect(out: Path, n: int = 6) -> None:
    assert main(["collect", "--levels", "BabyAI-GoToLocal-v0", "--episodes", str(n), "--workers", "0",
                 "--shard-episodes", "3", "--out", str(out), "--no-progress"]) == 0


def _as_v2(src: Path, dst: Path) -> None:
    """`src` (v3) written as version 2 wrote it: same rows, the v3 columns absent, version 2 stamped."""
    dst.mkdir()
    m = json.loads((src / MANIFEST).read_text())
    v2 = pa.schema([f for f in TRAJECTORY_SCHEMA if f.name not in V3_COLUMNS], metadata={"lam_schema_version": "2"})
    for key in m["shards"]:
        rows = pq.read_table(src / f"{key}.parquet").to_pylist()
        rows = [{**{k: v for k, v in r.items() if k not in V3_COLUMNS}, "schema_version": 2} for r in rows]
        (dst / key.split("/")[0]).mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=v2), dst / f"{key}.parquet", compression="zstd")
    m["schema_version"] = 2
    (dst / MANIFEST).write_text(json.dumps(m))


# issue 16 item 1
def test_v2_is_refused_by_name_and_upgrade_reproduces_a_fresh_v3_collect(tmp_path, capsys):
    fresh, old, new = tmp_path / "fresh", tmp_path / "old", tmp_path / "new"
    _collect(fresh)
    _as_v2(fresh, old)
    capsys.readouterr()
    for argv in (["data", "stats", str(old)], ["collect", "--levels", "BabyAI-GoToLocal-v0", "--episodes", "6",
                                                "--workers", "0", "--out", str(old), "--resume", "--no-progress"]):
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert "schema version 2" in err and f"lam data upgrade {old}" in err and "Traceback" not in err
    assert main(["data", "upgrade", str(old), str(new)]) == 0
    want = {(r.episode_id, r.step): r for r in TrajectoryStore(fresh).read_rows()}
    got = {(r.episode_id, r.step): r for r in TrajectoryStore(new).read_rows()}
    assert got.keys() == want.keys() and len(got) > 10
    for k, r in want.items():
        assert got[k].chat_messages() == r.chat_messages() and got[k].task_key == r.task_key
    # the upgraded dataset resumes like a collected one (its ledger came along)
    assert main(["collect", "--levels", "BabyAI-GoToLocal-v0", "--episodes", "8", "--workers", "0",
                 "--shard-episodes", "3", "--out", str(new), "--resume", "--no-progress"]) == 0
    assert len({r.episode_id for r in TrajectoryStore(new).read_rows("train")}) == 8


# issue 16 item 1
def test_upgrade_refuses_a_tool_space_dataset_and_writes_nothing(tmp_path, capsys):
    fresh, old, new = tmp_path / "fresh", tmp_path / "old", tmp_path / "new"
    assert main(["collect", "--env", "bfcl", "--levels", "multi_turn_base", "--episodes", "1", "--workers", "0",
                 "--out", str(fresh), "--no-progress"]) == 0
    _as_v2(fresh, old)
    capsys.readouterr()
    assert main(["data", "upgrade", str(old), str(new)]) != 0
    err = capsys.readouterr().err
    assert "cannot be re-rendered exactly" in err and f"--policy gold --gold {old}" in err
    assert not new.exists()


# issue 16 item 1
def test_a_v2_shard_in_a_v3_dataset_is_refused_by_name(tmp_path, capsys):
    fresh, old = tmp_path / "fresh", tmp_path / "old"
    _collect(fresh)
    _as_v2(fresh, old)
    key = sorted(json.loads((fresh / MANIFEST).read_text())["shards"])[0]
    (fresh / f"{key}.parquet").write_bytes((old / f"{key}.parquet").read_bytes())
    capsys.readouterr()
    assert main(["data", "stats", str(fresh)]) != 0
    err = capsys.readouterr().err
    assert f"{key}.parquet: schema version 2, expected 3" in err


# issue 16 item 1
def test_data_show_prints_the_stored_conversation(tmp_path, capsys):
    out = tmp_path / "bfcl"
    assert main(["collect", "--env", "bfcl", "--levels", "multi_turn_base", "--episodes", "1", "--workers", "0",
                 "--out", str(out), "--no-progress"]) == 0
    row = TrajectoryStore(out).read_rows("train")[0]
    capsys.readouterr()
    assert main(["data", "show", str(out), "--episode", row.episode_id]) == 0
    text = capsys.readouterr().out
    assert f"task     {row.task_key}" in text
    assert "[user]" in text and "[tool]" in text and "  tools" in text
    first_call = next(m for m in TrajectoryStore(out).read_rows("train")[-1].chat_messages() if m.get("tool_calls"))
    assert f"call {first_call['tool_calls'][0]['function']['name']}(" in text
