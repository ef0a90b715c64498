"""`lam eval --replay` rebuilds the environment each record names: a BFCL evaluation replays through
a fresh BFCL environment (not BabyAI), matches its recorded verdicts, and catches a tampered record.

    .venv/bin/python -m pytest -q tests/eval/test_replay_bfcl.py
"""
from __future__ import annotations

import json

import pyarrow.parquet as pq

from cluster.cli import main as lam


def _rewrite(shard, edit) -> None:
    table = pq.read_table(shard)
    rows = table.to_pylist()
    for r in rows:
        edit(r)
    pq.write_table(table.from_pylist(rows, schema=table.schema), shard)


# issue 21 item 8
def test_replay_of_a_bfcl_evaluation_matches_and_catches_tampering(ray_local, tmp_path, capsys):
    out = tmp_path / "eval"
    assert lam(["eval", "--env", "bfcl", "--levels", "multi_turn_base", "--policy", "expert", "--episodes", "2",
                "--workers", "1", "--no-html", "--out", str(out)]) == 0
    store = out / "expert"
    capsys.readouterr()

    assert lam(["eval", "--replay", str(store)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"checked": 2, "mismatched": []}

    shard = next((store / "episodes").glob("*.parquet"))
    rows = pq.read_table(shard).to_pylist()
    first, second = sorted({r["episode_id"] for r in rows})
    assert all(r["episode_success"] for r in rows)  # the gold calls pass; a changed call must not
    def one_call(r) -> dict | None:  # the call of a step with exactly one call and a string argument
        if r["action"].count("<tool_call>") != 1:
            return None
        body = json.loads(r["action"].split("<tool_call>")[1].split("</tool_call>")[0])
        return body if any(isinstance(v, str) for v in body["arguments"].values()) else None

    step = next(r["step"] for r in rows if r["episode_id"] == first and one_call(r))

    def tamper(r):
        if r["episode_id"] == first and r["step"] == step:  # one call's string arguments changed
            body = one_call(r)
            body["arguments"] = {k: (v + "_x" if isinstance(v, str) else v) for k, v in body["arguments"].items()}
            r["action"] = f"<tool_call>{json.dumps(body)}</tool_call>"
        if r["episode_id"] == second:  # the verdict rewritten, actions left as they were
            r["episode_success"] = False

    _rewrite(shard, tamper)
    assert lam(["eval", "--replay", str(store)]) == 1
    captured = capsys.readouterr()
    assert sorted(json.loads(captured.out)["mismatched"]) == [first, second]
    assert "2 of 2 replayed verdicts differ" in captured.err

    # a world whose registry entry is not replayable: one line saying so, not a wrong answer
    from dataclasses import replace

    from envs import registry

    registry.register_env("bfcl-live", lambda: replace(registry.get_env_spec("bfcl"), name="bfcl-live", replayable=False))
    try:
        _rewrite(shard, lambda r: r.update(env="bfcl-live"))
        assert lam(["eval", "--replay", str(store)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "'bfcl-live' cannot rebuild an episode" in err[0] and str(store) in err[0]
    finally:
        registry._SPECS.pop("bfcl-live", None)
        registry.get_env_spec.cache_clear()
