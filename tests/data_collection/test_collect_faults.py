"""Collector actors die, the driver is interrupted: the dataset still ends with exactly N unique,
complete episodes, none twice."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from data_collection.collector import CollectConfig, collect
from data_collection.store import TrajectoryStore, group_episodes

ROOT = Path(__file__).resolve().parents[2]


def _assert_exactly(out: Path, n: int) -> None:
    store = TrajectoryStore(out)
    eps = group_episodes(store.read_records("train"))
    assert len(eps) == n
    assert len({e[0]["episode_id"] for e in eps}) == len({e[0]["episode_hash"] for e in eps}) == n
    for ep in eps:  # complete: steps 0..k, ending in the verified success
        assert [r["step"] for r in ep] == list(range(len(ep))) and ep[-1]["done"] and ep[-1]["verified_success"]
    # the first N of the task stream: the batches cover 0..k without a hole (surplus only at the end)
    ranges = sorted((b["first_index"], b["end_index"]) for b in store.manifest()["batches"].values())
    assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    listed = {p.name for p in store.shard_paths("train")}
    assert {p.name for p in (out / "train").glob("*.parquet")} == listed  # no orphans
    assert not list(out.glob("**/.*tmp*"))


def test_killed_actors_are_restarted_and_their_batches_rerun(ray_local, tmp_path):
    killed = []

    def on_batch(stats, fleet):
        if len(killed) == 0:  # Ray kills it as a crash would; max_restarts brings it back
            ray_local.kill(fleet.actors[0], no_restart=False)
            killed.append("ray.kill")
        elif len(killed) == 1 and stats["batches"] >= 3:  # the process dies outright
            os.kill(fleet.pids[1], signal.SIGKILL)
            killed.append("SIGKILL")

    out = tmp_path / "ds"
    stats = collect(CollectConfig(episodes=300, workers=2, out=str(out), shard_episodes=30), progress=False,
                    on_batch=on_batch)
    assert killed == ["ray.kill", "SIGKILL"]
    assert stats["actor_restarts"] + stats["actors_replaced"] >= 1
    assert stats["kept"] == 300
    _assert_exactly(out, 300)


def test_sigint_mid_run_leaves_complete_shards_and_resume_gets_exactly_n(ray_local, tmp_path):
    out = tmp_path / "ds"
    n = 500
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "cluster.cli", "collect", "--episodes", str(n), "--workers", "2",
           "--shard-episodes", "20", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            manifest = out / "manifest.json"
            if manifest.exists() and len(json.loads(manifest.read_text()).get("batches", {})) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"collect ended before it could be interrupted: {proc.communicate()}"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    store = TrajectoryStore(out)
    held = len(group_episodes(store.read_records("train")))
    assert 0 < held < n
    for path in store.shard_paths():  # every listed shard is complete Parquet
        pq.read_table(path)
    stats = collect(CollectConfig(episodes=n, workers=2, out=str(out), shard_episodes=20), resume=True, progress=False)
    assert stats["kept_this_run"] == n - held
    _assert_exactly(out, n)
