"""A corrupt or missing shard: refused commands change nothing, `lam data repair` quarantines it,
and `lam collect ... --resume` re-collects exactly its episodes."""
import json
from pathlib import Path

from cluster.cli import main
from data_collection.store import TrajectoryStore, group_episodes

# Random moves in a 4x4 room: about half the episodes succeed, so every batch has a train/ and a failures/ shard.
ARGS = ["collect", "--levels", "BabyAI-GoToObjS4-v0", "--policy", "random", "--max-steps", "20", "--workers", "0",
        "--shard-episodes", "10", "--no-progress"]


def _collect(out: Path, n: int, *extra: str) -> int:
    return main(ARGS + ["--episodes", str(n), "--out", str(out), *extra])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _episodes(store: TrajectoryStore, subset: str) -> set[str]:
    return {e[0]["episode_id"] for e in group_episodes(store.read_records(subset))}


# issue 21 item 10
def test_a_refused_collect_changes_nothing_on_disk(tmp_path, capsys):
    out = tmp_path / "ds"
    assert _collect(out, 12) == 0
    store = TrajectoryStore(out)
    victim = store.shard_paths("train")[0]
    good = victim.read_bytes()
    victim.write_bytes(good[:100])  # truncated
    capsys.readouterr()
    before = _snapshot(out)
    assert _collect(out, 20, "--resume") == 2  # a corrupt shard
    err = capsys.readouterr().err
    assert victim.name in err and f"lam data repair {out}" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(out) == before  # episodes_requested and the rest untouched
    victim.write_bytes(good)
    before = _snapshot(out)
    assert _collect(out, 5, "--resume") == 2  # fewer than it holds
    assert "more than --episodes 5" in capsys.readouterr().err
    assert main(ARGS + ["--episodes", "20", "--out", str(out), "--resume", "--seed", "1"]) == 2  # another policy
    assert "--resume with policy=" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert json.loads((out / "manifest.json").read_text())["meta"]["episodes_requested"] == 12


# issue 21 item 10
def test_repair_quarantines_bad_shards_and_resume_recollects_exactly_their_episodes(tmp_path, capsys):
    out = tmp_path / "ds"
    assert _collect(out, 20) == 0
    store = TrajectoryStore(out)
    train, failures = _episodes(store, "train"), _episodes(store, "failures")
    corrupt, missing = store.shard_paths("train")[1], store.shard_paths("train")[2]
    corrupt.write_bytes(b"not parquet at all")
    missing.unlink()
    assert (out / "failures" / corrupt.name).exists()  # its batch's other shard: quarantined along with it
    capsys.readouterr()

    assert main(["data", "repair", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"quarantined train/{corrupt.name}" in said and f"quarantined train/{missing.name}" in said
    assert f"quarantined failures/{corrupt.name}" in said and "--resume" in said
    q = out / "quarantine"
    assert (q / "train" / corrupt.name).read_bytes() == b"not parquet at all"  # moved, never deleted
    assert "corrupt shard" in (q / "train" / corrupt.name).with_suffix(".reason.txt").read_text()
    assert "missing shard" in (q / "train" / missing.name).with_suffix(".reason.txt").read_text()
    assert (q / "failures" / corrupt.name).exists() and not (out / "failures" / corrupt.name).exists()
    m = store.manifest()
    assert corrupt.stem not in m["batches"] and missing.stem not in m["batches"] and len(m["batches"]) >= 1
    assert main(["data", "stats", str(out)]) == 0  # readable again
    assert main(["data", "repair", str(out)]) == 0 and "nothing to repair" in capsys.readouterr().out

    assert _collect(out, 20, "--resume") == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 20
    assert _episodes(store, "train") == train and _episodes(store, "failures") == failures  # exactly those again
    assert (q / "train" / corrupt.name).exists()  # --resume does not take quarantine for orphans
