"""The agent API's session store: SQLite in WAL mode, one owning process.

    store = SessionStore("runs/agent/sessions.db")   # raises StoreOwned while another live process owns it

Every step is written together with its session row in one transaction: a SIGKILL can only lose the
step in flight, never leave a half-written row. Each step row keeps the environment's state digest
after the step (envs/base.py `state_digest`), which a restart checks while it rebuilds the session.

One process owns a store: it holds an exclusive lock on `<db>.lock` (which names its PID) for as long
as it runs; the kernel drops the lock when the process dies, SIGKILL included, so a restart takes it
over at once. A second server on the same store stops with StoreOwned instead of running sessions the
first one also runs (both would rebuild and step them).
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time

_COLUMNS = ("id", "api_key", "env", "task", "policy", "runner", "status", "created", "updated", "steps", "success",
            "claimed_done", "claim", "end_reason", "error", "progress", "false_success", "invalid_actions",
            "blocked_actions", "examples", "diverged_step", "rebuilds")
_JSON = ("task", "policy", "runner", "examples")
# columns added after the first release: (name, SQL type), added to older stores on open
_ADDED = {"sessions": [("examples", "TEXT"), ("diverged_step", "INTEGER"), ("rebuilds", "INTEGER DEFAULT 0"),
                       ("secret", "INTEGER DEFAULT 0")],
          "steps": [("digest", "TEXT")]}


class StoreOwned(RuntimeError):
    """Another live process owns this session store."""


class SessionStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._owner = _own(path + ".lock")
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a process kill loses no commit
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, api_key TEXT, env TEXT, task TEXT, policy TEXT, "
            "runner TEXT, status TEXT, created REAL, updated REAL, steps INTEGER DEFAULT 0, success INTEGER DEFAULT 0, "
            "claimed_done INTEGER DEFAULT 0, claim TEXT DEFAULT '', end_reason TEXT DEFAULT '', error TEXT DEFAULT '', "
            "progress REAL DEFAULT 0, false_success INTEGER DEFAULT 0, invalid_actions INTEGER DEFAULT 0, "
            "blocked_actions INTEGER DEFAULT 0)")
        self._db.execute("CREATE TABLE IF NOT EXISTS steps (session_id TEXT, step INTEGER, body TEXT, "
                         "PRIMARY KEY (session_id, step))")
        for table, cols in _ADDED.items():
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for name, kind in cols:
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self._db.close()
        self._owner.close()  # releases the lock

    def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def live(self) -> list[dict]:
        """Sessions a previous process left idle or running, with their owner's key (internal use)."""
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)}, secret FROM sessions WHERE status IN "
                                    "('idle','running') ORDER BY created").fetchall()
        return [{**_row(r[:-1]), "api_key": r[_COLUMNS.index("api_key")], "secret": bool(r[-1])} for r in rows]

    def insert(self, row: dict) -> None:
        row = {k: json.dumps(v) if k in _JSON else v for k, v in row.items()}
        cols = ", ".join(row)
        self._tx([(f"INSERT INTO sessions ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))])

    def _set(self, sid: str, fields: dict) -> tuple[str, tuple]:
        fields = {**{k: json.dumps(v) if k in _JSON else v for k, v in fields.items()}, "updated": time.time()}
        return f"UPDATE sessions SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", (*fields.values(), sid)

    def update(self, sid: str, **fields) -> None:
        self._tx([self._set(sid, fields)])

    def add_step(self, sid: str, step: dict, digest: str | None = None, **fields) -> None:
        """The step row (with the environment's state digest after it) and the session's counters in one transaction."""
        self._tx([("INSERT OR REPLACE INTO steps (session_id, step, body, digest) VALUES (?, ?, ?, ?)",
                   (sid, step["step"], json.dumps(step, default=str), digest)), self._set(sid, fields)])

    def owner(self, sid: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT api_key FROM sessions WHERE id = ?", (sid,)).fetchone()
        return row[0] if row else None

    def get(self, sid: str) -> dict | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM sessions WHERE id = ?", (sid,)).fetchone()
        return _row(row) if row else None

    def list(self, api_key: str | None = None) -> list[dict]:
        sql, args = f"SELECT {', '.join(_COLUMNS)} FROM sessions", ()
        if api_key is not None:
            sql, args = sql + " WHERE api_key = ?", (api_key,)
        with self._lock:
            return [_row(r) for r in self._db.execute(sql + " ORDER BY created", args).fetchall()]

    def steps(self, sid: str, after: int = -1) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM steps WHERE session_id = ? AND step > ? ORDER BY step",
                                    (sid, after)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def digests(self, sid: str) -> list[str | None]:
        with self._lock:
            rows = self._db.execute("SELECT digest FROM steps WHERE session_id = ? ORDER BY step", (sid,)).fetchall()
        return [r[0] for r in rows]


def _row(values) -> dict:
    row = dict(zip(_COLUMNS, values))
    for k in _JSON:
        row[k] = json.loads(row[k]) if row[k] else None
    for k in ("success", "claimed_done", "false_success"):
        row[k] = bool(row[k])
    row["rebuilds"] = row["rebuilds"] or 0
    row.pop("api_key")
    return row


def _own(lock_path: str):
    """Hold `lock_path` exclusively (flock: released by the kernel when this process dies) and write our
    PID in it; StoreOwned, naming the owner's PID, when a live process holds it."""
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    f = open(lock_path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        db = lock_path.removesuffix(".lock")
        raise StoreOwned(f"session store {db} is owned by another agent API process (PID {pid}); one process "
                         f"serves a store: stop that one, or give this one another --db") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
