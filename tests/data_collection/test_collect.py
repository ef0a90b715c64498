import json

import pyarrow.parquet as pq
import pytest

from data_collection.collector import CollectConfig, collect
from data_collection.schema import SCHEMA_VERSION, TRAJECTORY_SCHEMA
from data_collection.store import DatasetError, TrajectoryStore, group_episodes
from envs.babyai import replay


def test_collected_dataset_is_exactly_n_verified_unique_and_replayable(bot_dataset):
    out, stats = bot_dataset
    assert stats["kept"] == stats["requested"] == 240
    assert stats["episodes"] == stats["kept"] + stats["failures"] + stats["duplicates"] + stats["env_errors"]
    store = TrajectoryStore(out)
    episodes = group_episodes(store.read_records("train"))
    assert len(episodes) == 240
    assert len({e[0]["episode_id"] for e in episodes}) == len({e[0]["episode_hash"] for e in episodes}) == 240
    for ep in episodes[:30]:
        assert [r["step"] for r in ep] == list(range(len(ep)))
        assert ep[-1]["done"] and ep[-1]["verified_success"] and all(r["episode_success"] for r in ep)
        r = ep[0]
        assert r["split"] == "train" and r["policy"] == "expert" and r["code_version"] and r["created_at"] > 0
        assert "BabyAIBot (minigrid" in r["model"] and r["variant"] == "" and r["base_level"] == r["level"]
        assert replay(r["level"], r["seed"], [x["action"] for x in ep])
    for path in store.shard_paths():  # every shard is complete Parquet with the declared schema
        assert pq.read_schema(path).equals(TRAJECTORY_SCHEMA)
    assert json.loads((out / "manifest.json").read_text())["schema_version"] == SCHEMA_VERSION


def test_card_counts_match_the_data(bot_dataset):
    out, stats = bot_dataset
    card = json.loads((out / "card.json").read_text())
    level = card["levels"]["BabyAI-GoToLocal-v0"]
    assert card["train_episodes"] == level["kept"] == 240 and card["complete"]
    assert level["attempted"] == stats["episodes"] and level["success_rate"] == pytest.approx(level["success"] / level["attempted"])
    assert sum(card["episode_length"]["histogram"].values()) == 240
    readme = (out / "README.md").read_text()
    assert "| BabyAI-GoToLocal-v0 | " in readme and "Episode length" in readme and "split: train" in readme


def test_readable_by_hf_datasets_and_pyarrow(bot_dataset, tmp_path):
    datasets = pytest.importorskip("datasets")
    out, stats = bot_dataset
    ds = datasets.load_dataset("parquet", data_files=str(out / "train" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert len(set(ds["episode_id"])) == stats["kept"]
    by_card = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf2"))  # README.md's configs header
    assert by_card["train"].num_rows == ds.num_rows
    assert pq.read_table(out / "train").num_rows == ds.num_rows


def test_resume_after_lost_batches_and_orphans_reaches_exactly_n(tmp_path):
    out = tmp_path / "ds"
    cfg = CollectConfig(episodes=40, workers=0, out=str(out), shard_episodes=10)
    collect(cfg, progress=False)
    store = TrajectoryStore(out)
    m = store.manifest()
    lost = sorted(m["batches"])[-2:]
    for name in lost:  # a crash lost two batches: gone from the manifest; one file survives as an orphan
        del m["batches"][name]
        for key in [k for k in m["shards"] if k.endswith(name)]:
            del m["shards"][key]
    (out / "train" / f"{lost[0]}.parquet").unlink()
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FileExistsError):
        collect(cfg, progress=False)
    with pytest.raises(ValueError, match="levels"):
        collect(CollectConfig(episodes=40, workers=0, out=str(out), levels=["BabyAI-PickupLoc-v0"]), resume=True)
    stats = collect(cfg, resume=True, progress=False)
    assert stats["orphans_removed"] == 1 and stats["kept_this_run"] == 20
    eps = group_episodes(store.read_records("train"))
    assert len({e[0]["seed"] for e in eps}) == len(eps) == 40
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(p.name for p in store.shard_paths("train"))
    again = collect(cfg, resume=True, progress=False)  # complete: nothing to do
    assert again["episodes"] == 0 and again["kept"] == 40


def test_duplicates_are_dropped_and_more_tasks_drawn(tmp_path):
    # A 4x4 room with one object has few layouts: identical episodes come up quickly.
    out = tmp_path / "dup"
    stats = collect(CollectConfig(levels=["BabyAI-GoToObjS4-v0"], episodes=60, workers=0, out=str(out),
                                  shard_episodes=25), progress=False)
    assert stats["duplicates"] > 0 and stats["kept"] == 60 and stats["episodes"] >= 60 + stats["duplicates"]
    eps = group_episodes(TrajectoryStore(out).read_records("train"))
    assert len(eps) == len({e[0]["episode_hash"] for e in eps}) == 60


def test_corrupt_shard_and_schema_mismatch_name_the_file(bot_dataset, tmp_path):
    import shutil

    import pyarrow as pa

    src, _ = bot_dataset
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    store = TrajectoryStore(out)
    victim = store.shard_paths("train")[1]
    good = victim.read_bytes()
    victim.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match=victim.name):
        store.read("train")
    with pytest.raises(DatasetError, match=victim.name):  # resuming refuses it too, naming the file
        collect(CollectConfig(episodes=300, workers=0, out=str(out), shard_episodes=60), resume=True, progress=False)
    # a version-1 shard (no version-2 columns) is named with its version
    t = pq.read_table(src / "train" / victim.name)
    old = t.select([n for n in t.column_names if n not in ("variant", "base_level", "base_request", "error")])
    old = old.set_column(old.column_names.index("schema_version"), "schema_version", pa.array([1] * old.num_rows, pa.int32()))
    pq.write_table(old.replace_schema_metadata(None), victim)
    with pytest.raises(DatasetError, match=rf"{victim.name}: schema version 1, expected {SCHEMA_VERSION}"):
        store.read("train")
    victim.write_bytes(good)
    assert len(group_episodes(store.read_records("train"))) == 240  # the others were never touched
    m = json.loads((out / "manifest.json").read_text())
    m["schema_version"] = SCHEMA_VERSION - 1
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match=f"manifest.json: schema version {SCHEMA_VERSION - 1}"):
        store.manifest()


def test_full_disk_names_the_file_keeps_earlier_shards_and_resumes(tmp_path, monkeypatch):
    import errno

    import data_collection.atomic_file as store_mod  # its _write_bytes: every atomic write of the store

    out = tmp_path / "ds"
    real, calls = store_mod._write_bytes, []

    def flaky(path, data, fsync):  # the 3rd train shard write hits a full disk
        if path.parent.name == "train" and ".parquet.tmp-" in path.name:
            calls.append(path)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, fsync)

    monkeypatch.setattr(store_mod, "_write_bytes", flaky)
    cfg = CollectConfig(episodes=50, workers=0, out=str(out), shard_episodes=10)
    with pytest.raises(DatasetError, match=r"cannot write .*shard-0000000020\.parquet: No space left on device"):
        collect(cfg, progress=False)
    store = TrajectoryStore(out)
    assert len(store.shard_paths("train")) == 2 and not list(out.glob("**/.*tmp*"))
    assert len(group_episodes(store.read_records("train"))) == 20
    monkeypatch.setattr(store_mod, "_write_bytes", real)
    collect(cfg, resume=True, progress=False)
    eps = group_episodes(store.read_records("train"))
    assert len(eps) == len({e[0]["episode_id"] for e in eps}) == 50


def test_unlock_to_unlock_needs_a_time_limit_and_bot_hangs_become_labelled_failures(tmp_path):
    with pytest.raises(ValueError, match="needs a per-episode time limit"):
        collect(CollectConfig(levels=["BabyAI-UnlockToUnlock-v0"], time_limit_s=0, workers=0, out=str(tmp_path / "a")))
    out = tmp_path / "utu"
    stats = collect(CollectConfig(levels=["BabyAI-UnlockToUnlock-v0"], episodes=8, workers=0, out=str(out),
                                  shard_episodes=4), progress=False)
    assert stats["kept"] == 8 and stats["policy_errors"] + stats["dropped_time_limit"] >= 1
    fails = group_episodes(TrajectoryStore(out).read_records("failures"))
    assert fails and all(e[0]["end_reason"] in ("policy_error", "time_limit") for e in fails)
    assert any("BotStuck" in e[0]["error"] for e in fails)


def test_ledger_hands_out_each_index_once(tmp_path):
    from data_collection.collector import _Ledger

    ledger = _Ledger(TrajectoryStore(tmp_path / "empty"))
    ledger.taken = [(0, 10), (20, 30), (30, 32)]  # holes: [10, 20) and [32, ...)
    got = [ledger.next_range(4) for _ in range(5)]
    assert got == [(10, 14), (14, 18), (18, 20), (32, 36), (36, 40)]
    covered = [i for a, b in ledger.taken for i in range(a, b)]
    assert len(covered) == len(set(covered)) == 40


def test_a_second_collector_on_the_same_directory_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".lock", "a") as held:  # as a running `lam collect` holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(FileExistsError, match="another lam collect is writing"):
            collect(CollectConfig(episodes=5, workers=0, out=str(out)), progress=False)
    assert collect(CollectConfig(episodes=5, workers=0, out=str(out)), progress=False)["kept"] == 5
