"""Whole-file writes that a crash never leaves half done: write a temporary file beside the target,
then rename it over the target (atomic on POSIX). Readers see the old file or the new one.

The temporary name is `.NAME.tmp-PID`; TrajectoryStore.remove_orphans deletes ones a crash left.
"""
from __future__ import annotations

import os
from pathlib import Path


def _write_bytes(path: Path, data: bytes, fsync: bool) -> None:
    with open(path, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def write_atomic(path: str | Path, data: bytes | str, fsync: bool = False) -> None:
    """`fsync`: also survive a power cut (the dataset's shards and manifest), at a few ms per file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_bytes(tmp, data.encode() if isinstance(data, str) else data, fsync)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
