"""Parquet shards plus a manifest. Shards are written to a temp file and renamed, and the manifest
is rewritten atomically after each group of shards, so a crash leaves only complete shards behind.
The manifest is the truth: a shard file it does not list (a crash between rename and manifest
update) is an orphan that `remove_orphans()` deletes before a collection resumes.

Readable by pyarrow and `datasets.load_dataset("parquet", data_files=f"{dir}/train/*.parquet")`.
"""
from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_collection.atomic_file import write_atomic
from data_collection.schema import SCHEMA_VERSION, TRAJECTORY_SCHEMA, StepRow, rows_table, table_rows

MANIFEST = "manifest.json"
ZSTD_LEVEL = 9
# What the collector's ledger counts per level for each batch (manifest["batches"][name]["levels"]);
# here, beside the manifest, so the collector that writes it and the card that reads it share one list.
LEVEL_COUNTERS = ("attempted", "success", "kept", "failures", "duplicates", "errors", "time_limit", "policy_error")


class DatasetError(RuntimeError):
    """A dataset on disk cannot be read or written as asked; the message names the file."""


class ShardError(DatasetError):
    """A listed shard is missing, corrupt or of another version. `reason` is the problem alone; the
    message adds the way out, since the shard cannot be fixed in place."""

    def __init__(self, root: Path, reason: str) -> None:
        super().__init__(f"{reason}; `lam data repair {root}` quarantines it, then `lam collect ... --resume` "
                         "re-collects its episodes")
        self.reason = reason


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """write_atomic, durable, its failure a DatasetError that says what to do."""
    try:
        write_atomic(path, data, fsync=True)
    except OSError as e:
        hint = "; free some space, then re-run with --resume" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise DatasetError(f"cannot write {path}: {e.strerror or e}{hint} (earlier shards are intact)") from e


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()).rstrip(".")


def _way_out(root: Path, version) -> str:
    if version == 2:  # version 3 added the conversation; a text-space dataset converts exactly
        return (f"convert it with `lam data upgrade {root} {str(root).rstrip('/')}-v3` (exact for text spaces; "
                "tool spaces are re-run through the runner, it says how), then use the new directory")
    return "re-collect into a new --out (see data_collection/schema.py for what changed)"


def _version_of(path: Path, schema: pa.Schema) -> str:
    meta = schema.metadata or {}
    if b"lam_schema_version" in meta:
        return meta[b"lam_schema_version"].decode()
    if "schema_version" in schema.names:  # version 1 wrote it only as a column
        try:
            col = pq.read_table(path, columns=["schema_version"]).column(0)
            return str(col[0].as_py()) if len(col) else "unknown"
        except Exception:
            pass
    return "unknown"


@dataclass
class TrajectoryStore:
    """A directory of trajectory shards: `<root>/<subset>/<shard>.parquet` + `<root>/manifest.json`."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # -- manifest ----------------------------------------------------------------------
    def manifest(self) -> dict:
        path = self.root / MANIFEST
        if not path.exists():
            return {"schema_version": SCHEMA_VERSION, "shards": {}, "meta": {}}
        try:
            m = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"corrupt manifest {path}: {e}") from e
        if not isinstance(m, dict) or "shards" not in m:
            raise DatasetError(f"corrupt manifest {path}: no 'shards' table")
        if m.get("schema_version") != SCHEMA_VERSION:
            raise DatasetError(f"{path}: schema version {m.get('schema_version')} but this code reads version "
                               f"{SCHEMA_VERSION}; {_way_out(self.root, m.get('schema_version'))}")
        return m

    def _save_manifest(self, m: dict) -> None:
        _atomic_write_bytes(self.root / MANIFEST, json.dumps(m, indent=1, sort_keys=True).encode())

    def set_meta(self, **meta) -> None:
        m = self.manifest()
        m["meta"].update(meta)
        self._save_manifest(m)

    # -- writing -----------------------------------------------------------------------
    def write_shard(self, subset: str, name: str, records: list[StepRow] | pa.Table,
                    info: dict | None = None) -> Path:
        """Write one shard atomically, then record it in the manifest."""
        return self.write_group(name, {subset: records}, {subset: info or {}})[subset]

    def write_group(
        self, name: str, parts: dict[str, list[StepRow] | pa.Table], infos: dict[str, dict],
        ledger: dict | None = None
    ) -> dict[str, Path]:
        """Write `<subset>/<name>.parquet` for every non-empty part, then list them all, and the
        collector's `ledger` entry for the batch (`manifest["batches"][name]`), in one manifest
        update: a batch is in the dataset completely or not at all. On a write error the group's
        files are removed again and the DatasetError names the file."""
        written: dict[str, Path] = {}
        m = self.manifest()
        before = set(m["shards"])
        try:
            for subset, rows in parts.items():
                table = _table(rows)
                if ledger is not None and table.num_rows == 0:
                    continue  # the ledger records the batch; no empty shard files
                (self.root / subset).mkdir(parents=True, exist_ok=True)
                path = self.root / subset / f"{name}.parquet"
                sink = pa.BufferOutputStream()
                # zstd level 9: v3 repeats each window's history in `messages`; level 9 stores it in 0.71x the bytes
                # of the default level at no noticeable cost per shard (data_collection/schema.py has the figures)
                pq.write_table(table.replace_schema_metadata(TRAJECTORY_SCHEMA.metadata), sink, compression="zstd",
                               compression_level=ZSTD_LEVEL)
                _atomic_write_bytes(path, sink.getvalue().to_pybytes())
                written[subset] = path
                episodes = len(pc.unique(table.column("episode_id"))) if table.num_rows else 0
                m["shards"][f"{subset}/{name}"] = {"rows": table.num_rows, "episodes": episodes, **infos.get(subset, {})}
            if ledger is not None:
                m.setdefault("batches", {})[name] = ledger
            self._save_manifest(m)
        except BaseException:
            for subset, path in written.items():
                if f"{subset}/{name}" not in before:  # never delete a shard the manifest already lists
                    path.unlink(missing_ok=True)
            raise
        return written

    def remove_orphans(self) -> list[Path]:
        """Delete shard files and temp files the manifest does not list (left by a killed writer)."""
        listed = {self.root / f"{k}.parquet" for k in self.manifest()["shards"]}
        removed = []
        for path in sorted(self.root.glob("*/*.parquet")) + sorted(self.root.glob("**/.*.tmp-*")):
            if path not in listed:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def quarantine(self, bad: dict[str, str], batches: list[str]) -> dict[str, Path | None]:
        """Move the shards `bad` ({"train/shard-...": reason}) to `<root>/quarantine/<subset>/` with a
        `.reason.txt` each, then drop them and the ledger entries `batches` from the manifest in one
        update. Nothing is deleted; a crash in between leaves listed-but-missing shards that a second
        repair drops. Returns where each shard went (None: it was missing)."""
        m = self.manifest()
        moved: dict[str, Path | None] = {}
        for key, reason in bad.items():
            subset, name = key.split("/", 1)
            folder = self.root / "quarantine" / subset  # two levels down: remove_orphans never sees it
            folder.mkdir(parents=True, exist_ok=True)
            dest, n = folder / f"{name}.parquet", 1
            while dest.exists() or dest.with_suffix(".reason.txt").exists():  # an earlier repair's: keep both
                dest, n = folder / f"{name}.{n}.parquet", n + 1
            src = self.root / f"{key}.parquet"
            moved[key] = dest if src.exists() else None
            if src.exists():
                os.replace(src, dest)
            _atomic_write_bytes(dest.with_suffix(".reason.txt"), f"{key}.parquet: {reason}\n".encode())
        for key in bad:
            m["shards"].pop(key, None)
        for name in batches:
            m.get("batches", {}).pop(name, None)
        self._save_manifest(m)
        return moved

    # -- reading -----------------------------------------------------------------------
    def shard_paths(self, subset: str | None = None) -> list[Path]:
        m = self.manifest()
        keys = sorted(k for k in m["shards"] if subset is None or k.split("/")[0] == subset)
        return [self.root / f"{k}.parquet" for k in keys]

    def check_shard(self, path: Path) -> pa.Schema:
        """The shard's schema, or a ShardError naming the file (missing, corrupt, other version)."""
        if not path.exists():
            raise ShardError(self.root, f"missing shard {path} (listed in {self.root / MANIFEST})")
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise ShardError(self.root, f"corrupt shard {path}: {_one_line(e)}") from e
        if not schema.equals(TRAJECTORY_SCHEMA):
            raise ShardError(self.root, f"{path}: schema version {_version_of(path, schema)}, expected {SCHEMA_VERSION} "
                                        "(its columns differ from data_collection/schema.py)")
        return schema

    def read_shard(self, path: Path, columns: list[str] | None = None) -> pa.Table:
        """One shard's rows (every page of `columns` decoded), or a ShardError naming the file."""
        self.check_shard(path)
        try:
            t = pq.read_table(path, columns=columns)
        except (OSError, pa.ArrowInvalid) as e:
            raise ShardError(self.root, f"corrupt shard {path}: {_one_line(e)}") from e
        if columns is None or "schema_version" in columns:
            versions = set(t.column("schema_version").to_pylist()) if t.num_rows else {SCHEMA_VERSION}
            if versions != {SCHEMA_VERSION}:
                raise ShardError(self.root, f"{path}: schema version {sorted(versions)}, expected {SCHEMA_VERSION}")
        return t

    def read(self, subset: str | None = None, columns: list[str] | None = None) -> pa.Table:
        tables = [self.read_shard(path, columns) for path in self.shard_paths(subset)]
        if not tables:
            raise DatasetError(f"no {subset or ''} shards in {self.root} (is this a lam dataset directory?)")
        return pa.concat_tables(tables)

    def read_rows(self, subset: str | None = None) -> list[StepRow]:
        """Every row of `subset` (all subsets: None), typed; group them with schema.group_steps."""
        return table_rows(self.read(subset))

    def read_records(self, subset: str | None = None) -> list[dict]:
        """read_rows as dicts: the tests' dict view (production code reads StepRows)."""
        return self.read(subset).to_pylist()


def _table(rows: list[StepRow] | pa.Table) -> pa.Table:
    return rows if isinstance(rows, pa.Table) else rows_table(rows)


def group_episodes(records: list[dict]) -> list[list[dict]]:
    """schema.group_steps for read_records' dicts: the tests' dict view (production code uses group_steps)."""
    by_id: dict[str, list[dict]] = {}
    for r in records:
        by_id.setdefault(r["episode_id"], []).append(r)
    return [sorted(v, key=lambda r: r["step"]) for v in by_id.values()]
