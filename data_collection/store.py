"""Parquet shards plus a manifest. Shards are written to a temp file and renamed, and the manifest
is rewritten atomically after each shard, so a crash leaves only complete shards behind.

Readable by pyarrow and `datasets.load_dataset("parquet", data_files=f"{dir}/*/*.parquet")`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_collection.schema import SCHEMA_VERSION, records_to_table

MANIFEST = "manifest.json"


class DatasetError(RuntimeError):
    """A dataset on disk cannot be read as asked; the message names the file."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"cannot write {path}: {e.strerror or e}") from e


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
        except (json.JSONDecodeError, OSError) as e:
            raise DatasetError(f"corrupt manifest {path}: {e}") from e
        if m.get("schema_version") != SCHEMA_VERSION:
            raise DatasetError(
                f"{path}: schema version {m.get('schema_version')} but this code reads version {SCHEMA_VERSION}"
            )
        return m

    def _save_manifest(self, m: dict) -> None:
        _atomic_write_bytes(self.root / MANIFEST, json.dumps(m, indent=1, sort_keys=True).encode())

    def set_meta(self, **meta) -> None:
        m = self.manifest()
        m["meta"].update(meta)
        self._save_manifest(m)

    # -- writing -----------------------------------------------------------------------
    def write_shard(self, subset: str, name: str, records: list[dict], info: dict | None = None) -> Path:
        """Write one shard atomically, then record it in the manifest."""
        (self.root / subset).mkdir(parents=True, exist_ok=True)
        path = self.root / subset / f"{name}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(records_to_table(records), sink, compression="zstd")
        _atomic_write_bytes(path, sink.getvalue().to_pybytes())
        m = self.manifest()
        episodes = len({r["episode_id"] for r in records})
        m["shards"][f"{subset}/{name}"] = {"rows": len(records), "episodes": episodes, **(info or {})}
        self._save_manifest(m)
        return path

    # -- reading -----------------------------------------------------------------------
    def shard_paths(self, subset: str | None = None) -> list[Path]:
        m = self.manifest()
        keys = sorted(k for k in m["shards"] if subset is None or k.split("/")[0] == subset)
        return [self.root / f"{k}.parquet" for k in keys]

    def read(self, subset: str | None = None, columns: list[str] | None = None) -> pa.Table:
        tables = []
        for path in self.shard_paths(subset):
            try:
                t = pq.read_table(path, columns=columns)
            except (OSError, pa.ArrowInvalid) as e:
                raise DatasetError(f"corrupt or missing shard {path}: {e}") from e
            if columns is None or "schema_version" in (columns or []):
                versions = set(t.column("schema_version").to_pylist()) if t.num_rows else {SCHEMA_VERSION}
                if versions != {SCHEMA_VERSION}:
                    raise DatasetError(f"{path}: schema version {sorted(versions)}, expected {SCHEMA_VERSION}")
            tables.append(t)
        if not tables:
            raise DatasetError(f"no {subset or ''} shards in {self.root} (is this a lam dataset directory?)")
        return pa.concat_tables(tables)

    def read_records(self, subset: str | None = None) -> list[dict]:
        return self.read(subset).to_pylist()


def group_episodes(records: list[dict]) -> list[list[dict]]:
    """Records grouped per episode, each sorted by step, in first-seen order."""
    by_id: dict[str, list[dict]] = {}
    for r in records:
        by_id.setdefault(r["episode_id"], []).append(r)
    return [sorted(v, key=lambda r: r["step"]) for v in by_id.values()]
