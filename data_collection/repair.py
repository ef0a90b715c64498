"""Quarantine the shards of a dataset that cannot be read, so a resumed collection replaces them.

    lam data repair runs/data
    lam collect ... --out runs/data --resume     # re-collects exactly the quarantined episodes

A shard is bad when its file is missing, does not decode completely, has another schema version,
or holds other row or episode counts than the manifest lists. A collector batch enters the dataset
as one group (its train/ and failures/ shards and its ledger entry), so a bad shard takes its batch
along: the ledger entry is dropped, which frees the batch's task indices for --resume to run again,
and the sibling shard goes to quarantine too (kept, its episodes would come back as duplicates).
Nothing is deleted: files move to DIR/quarantine/<subset>/, each with a `.reason.txt`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_collection.store import MANIFEST, DatasetError, ShardError, TrajectoryStore


@dataclass
class RepairReport:
    shards: int = 0  # listed in the manifest before the repair
    quarantined: dict[str, tuple[str, Path | None]] = field(default_factory=dict)  # key -> (reason, new path)
    batches: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (first, end, kept)
    train_episodes: int = 0  # left in train/ after the repair


def _shard_problem(store: TrajectoryStore, key: str, info: dict) -> str | None:
    try:
        t = store.read_shard(store.root / f"{key}.parquet")
    except ShardError as e:
        return e.reason
    episodes = len(set(t.column("episode_id").to_pylist()))
    if (t.num_rows, episodes) != (info.get("rows"), info.get("episodes")):
        return (f"{key}.parquet holds {t.num_rows} rows of {episodes} episodes, the manifest lists "
                f"{info.get('rows')} rows of {info.get('episodes')}")
    return None


def _batch_problem(m: dict, name: str, batch: dict, bad: dict[str, str]) -> str | None:
    """Why the batch's ledger entry no longer matches its shards (None: it does)."""
    counts = {"train": 0, "failures": 0}
    for c in batch["levels"].values():
        counts["train"] += c.get("kept", 0)
        counts["failures"] += c.get("failures", 0)
    for subset, n in counts.items():
        key = f"{subset}/{name}"
        if key in bad:
            return f"quarantined with {key}.parquet (same batch), so --resume re-collects the whole batch"
        held = m["shards"].get(key, {}).get("episodes", 0)
        if held != n:
            return f"the ledger counts {n} episodes in {key}.parquet, the manifest {held}"
    return None


def find_problems(store: TrajectoryStore) -> tuple[dict[str, str], dict[str, str]]:
    """({shard key: reason}, {batch name: reason}) for everything a resume would refuse."""
    m = store.manifest()
    bad = {key: why for key, info in sorted(m["shards"].items()) if (why := _shard_problem(store, key, info))}
    bad_batches = {}
    for name, batch in sorted(m.get("batches", {}).items()):
        why = _batch_problem(m, name, batch, bad)
        if why:
            bad_batches[name] = why
            for key in m["shards"]:
                if key.split("/", 1)[1] == name and key not in bad:
                    bad[key] = why
    return bad, bad_batches


def repair(root: str | Path) -> RepairReport:
    """Validate every shard; quarantine the bad ones and their batches; rewrite the card."""
    from data_collection.card import write_card
    from data_collection.collector import _sole_writer

    store = TrajectoryStore(Path(root))
    if not (store.root / MANIFEST).is_file():
        raise DatasetError(f"no {MANIFEST} in {store.root} (is this a lam dataset directory?)")
    with _sole_writer(store.root):
        m = store.manifest()
        bad, bad_batches = find_problems(store)
        report = RepairReport(shards=len(m["shards"]))
        report.batches = {name: (b["first_index"], b["end_index"], sum(c.get("kept", 0) for c in b["levels"].values()))
                          for name, b in m.get("batches", {}).items() if name in bad_batches}
        if bad or bad_batches:
            moved = store.quarantine(bad, list(bad_batches))
            report.quarantined = {key: (bad[key], moved[key]) for key in bad}
        m = store.manifest()
        report.train_episodes = sum(v["episodes"] for k, v in m["shards"].items() if k.startswith("train/"))
        if m["shards"] or m.get("batches"):
            write_card(store)  # the card describes what is left
    return report


def describe(report: RepairReport, root: str | Path) -> list[str]:
    """What `lam data repair` prints: one line per quarantined shard, then what to run next."""
    if not report.quarantined and not report.batches:
        return [f"all {report.shards} shards in {root} are intact; nothing to repair"]
    lines = []
    for key, (reason, dest) in report.quarantined.items():
        where = f"moved to {dest}" if dest else "file was missing"
        lines.append(f"quarantined {key}.parquet ({where}): {reason}")
    if report.batches:
        kept = sum(k for _, _, k in report.batches.values())
        spans = ", ".join(f"{a}-{b - 1}" for a, b, _ in sorted(report.batches.values()))
        lines.append(f"dropped {len(report.batches)} batch(es) from the manifest (task indices {spans}; "
                     f"{kept} train episodes); {report.train_episodes} episodes remain in {root}/train")
    lines.append(f"next: re-run your `lam collect ... --out {root} --resume` (same settings) to re-collect them")
    return lines
