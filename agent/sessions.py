"""Agent sessions: one episode each, driven step by step or run to completion in a thread, and
persisted in SQLite (WAL) so a restart loses none.

Every step is written together with its session row in one transaction: a SIGKILL can only lose the
step in flight, never leave a half-written row. On start, sessions that were idle or running are
marked `interrupted` (their environment lived in the dead process); finished ones stay readable.

Statuses: idle (created, waiting for step/run) · running · finished (the episode ended: see
end_reason, success, claim) · cancelled · failed (the environment or the server broke, see error)
· interrupted (the API stopped while the session was live).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

from agent.episode import EpisodeRunner, RunnerConfig
from agent.memory import EpisodicStore, Memory, MemoryConfig
from agent.policies import ModelEndpointError, check_model_endpoint
from envs.base import Task

LIVE = ("idle", "running")
TERMINAL = ("finished", "cancelled", "failed", "interrupted")
_COLUMNS = ("id", "api_key", "env", "task", "policy", "runner", "status", "created", "updated", "steps", "success",
            "claimed_done", "claim", "end_reason", "error", "progress", "false_success", "invalid_actions",
            "blocked_actions")
_JSON = ("task", "policy", "runner")


class ApiError(Exception):
    """An error the API answers with: HTTP status, a stable code, and a message saying what to do."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class SessionStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
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

    def recover(self) -> int:
        """Mark sessions left live by a previous process as interrupted; returns how many."""
        with self._lock:
            n = self._db.execute("SELECT COUNT(*) FROM sessions WHERE status IN ('idle','running')").fetchone()[0]
        self._tx([("UPDATE sessions SET error = 'the agent API stopped while this session was ' || status, "
                   "status = 'interrupted', updated = ? WHERE status IN ('idle','running')", (time.time(),))])
        return n

    def insert(self, row: dict) -> None:
        row = {k: json.dumps(v) if k in _JSON else v for k, v in row.items()}
        cols = ", ".join(row)
        self._tx([(f"INSERT INTO sessions ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))])

    def _set(self, sid: str, fields: dict) -> tuple[str, tuple]:
        fields = {**fields, "updated": time.time()}
        return f"UPDATE sessions SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", (*fields.values(), sid)

    def update(self, sid: str, **fields) -> None:
        self._tx([self._set(sid, fields)])

    def add_step(self, sid: str, step: dict, **fields) -> None:
        """The step row and the session's counters in one transaction."""
        self._tx([("INSERT OR REPLACE INTO steps (session_id, step, body) VALUES (?, ?, ?)",
                   (sid, step["step"], json.dumps(step, default=str))), self._set(sid, fields)])

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


def _row(values) -> dict:
    row = dict(zip(_COLUMNS, values))
    for k in _JSON:
        row[k] = json.loads(row[k]) if row[k] else None
    for k in ("success", "claimed_done", "false_success"):
        row[k] = bool(row[k])
    row.pop("api_key")
    return row


@dataclass
class LiveSession:
    id: str
    api_key: str
    runner: EpisodeRunner
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class SessionManager:
    """Creates, steps, runs and cancels sessions; the HTTP layer (agent/api.py) only translates."""

    def __init__(self, store: SessionStore, api_keys: dict[str, int] | None = None, max_live: int = 64,
                 memory_path: str | None = None, verifier=None) -> None:
        self.store, self.api_keys, self.max_live = store, api_keys or {}, max_live
        self.verifier = verifier  # agent/verification.py SessionVerifier: scores finished sessions (or None)
        self.live: dict[str, LiveSession] = {}
        self._lock = threading.Lock()
        self.memory_store = EpisodicStore(memory_path)
        self.recovered = store.recover()

    # -- auth --------------------------------------------------------------------------
    def owner(self, api_key: str | None) -> str:
        if not self.api_keys:
            return ""
        if not api_key or api_key not in self.api_keys:
            raise ApiError(401, "unauthorized", "missing or unknown API key: send 'Authorization: Bearer <key>'")
        return api_key

    def _session(self, sid: str, key: str) -> dict:
        row = self.store.get(sid)
        if row is None or (self.api_keys and self.store.owner(sid) != key):
            raise ApiError(404, "session_not_found", f"no session {sid!r}; GET /v1/sessions lists yours")
        return row

    # -- create ------------------------------------------------------------------------
    def create(self, req: dict, key: str) -> dict:
        from envs.registry import get_env_spec, list_envs

        if req["env"] not in list_envs():
            raise ApiError(400, "unknown_environment", f"unknown environment {req['env']!r}; known: {', '.join(list_envs())}")
        spec = get_env_spec(req["env"])
        level = req.get("level") or ("BabyAI-GoToLocal-v0" if "BabyAI-GoToLocal-v0" in spec.levels else spec.levels[0])
        if level not in spec.levels:
            shown = ", ".join(spec.levels[:8]) + (", ..." if len(spec.levels) > 8 else "")
            raise ApiError(400, "unknown_level", f"unknown level {level!r} for env {req['env']!r}; known: {shown}")
        task = Task(req["env"], level, int(req.get("seed") or 0), req.get("split") or "test")
        with self._lock:
            mine = [s for s in self.live.values() if s.api_key == key]
            limit = self.api_keys.get(key, self.max_live) if self.api_keys else self.max_live
            if len(mine) >= limit or len(self.live) >= self.max_live:
                raise ApiError(429, "too_many_sessions", f"{len(mine)} live sessions for this key (limit {limit}); "
                               "wait for one to finish or DELETE one")
        policy_spec = dict(req.get("policy") or {"kind": "expert"})
        policy = _build_policy(policy_spec, task)
        runner_cfg = _runner_config(req)
        env = _make_env(req["env"])
        sid = uuid.uuid4().hex[:16]
        mem = MemoryConfig(**runner_cfg.memory)
        memory = Memory(mem, self.memory_store) if mem.enabled else None
        runner = EpisodeRunner(env, policy, task, runner_cfg, episode_id=sid, memory=memory)
        try:
            runner.start()
        except (ValueError, KeyError, IndexError) as e:
            env.close()
            raise ApiError(400, "invalid_task", f"cannot start {task.task_id!r} in {req['env']!r}: {e}") from None
        now = time.time()
        public_policy = {k: v for k, v in policy_spec.items() if k != "api_key"}
        self.store.insert({"id": sid, "api_key": key, "env": req["env"], "task": asdict(task), "policy": public_policy,
                           "runner": runner_cfg.model_dump(), "status": "idle", "created": now, "updated": now})
        with self._lock:
            self.live[sid] = LiveSession(sid, key, runner)
        if req.get("run", True):
            self.run(sid, key)
        return self.describe(sid, key, steps=False)

    # -- drive -------------------------------------------------------------------------
    def step(self, sid: str, key: str) -> dict:
        sess = self._live(sid, key, "step")
        if sess.thread is not None:
            raise ApiError(409, "session_running", f"session {sid} is running to completion; GET it or DELETE it")
        with sess.lock:
            self._advance(sess)
            if sess.runner.finished:
                self._finish(sess)
        return self.describe(sid, key)

    def run(self, sid: str, key: str) -> dict:
        sess = self._live(sid, key, "run")
        with sess.lock:
            if sess.thread is None:
                self.store.update(sid, status="running")
                sess.thread = threading.Thread(target=self._run, args=(sess,), name=f"session-{sid}", daemon=True)
                sess.thread.start()
        return self.describe(sid, key, steps=False)

    def cancel(self, sid: str, key: str) -> dict:
        row = self._session(sid, key)
        sess = self.live.get(sid)
        if sess is None:
            raise ApiError(409, "session_ended", f"session {sid} already ended ({row['status']})")
        sess.cancel.set()
        if sess.thread is None:  # idle: nobody else will notice the flag
            with sess.lock:
                sess.runner.stop("cancelled")
                self._finish(sess)
        else:
            sess.thread.join(timeout=5)
        return self.describe(sid, key, steps=False)

    def _live(self, sid: str, key: str, what: str) -> LiveSession:
        row = self._session(sid, key)
        sess = self.live.get(sid)
        if sess is None:
            raise ApiError(409, "session_ended", f"cannot {what} session {sid}: it is {row['status']}")
        return sess

    def _run(self, sess: LiveSession) -> None:
        with sess.lock:
            while not sess.runner.finished:
                if sess.cancel.is_set():
                    sess.runner.stop("cancelled")
                    break
                if not self._advance(sess):
                    return
            self._finish(sess)

    def _advance(self, sess: LiveSession) -> bool:
        """One step, persisted. Anything the runner raises fails this session only."""
        try:
            log = sess.runner.advance()
        except Exception as e:  # an environment crash or a bug: this session fails, the server goes on
            self._fail(sess, f"{type(e).__name__}: {e}")
            return False
        ep = sess.runner.ep
        if log is not None:
            self.store.add_step(sess.id, asdict(log), steps=len(ep.steps), invalid_actions=ep.invalid_actions,
                                blocked_actions=ep.blocked_actions, progress=sess.runner.progress)
        return True

    def _finish(self, sess: LiveSession) -> None:
        ep = sess.runner.finish()
        status = "cancelled" if ep.end_reason == "cancelled" else "finished"
        if self.verifier is not None and status == "finished":  # before the status says so: readers see both
            self.verifier.record(sess.id, ep)
        self.store.update(sess.id, status=status, steps=len(ep.steps), success=ep.success, claimed_done=ep.claimed_done,
                          claim=ep.claim, end_reason=ep.end_reason, error=ep.error, progress=ep.progress,
                          false_success=ep.false_success, invalid_actions=ep.invalid_actions,
                          blocked_actions=ep.blocked_actions)
        self._release(sess)

    def _fail(self, sess: LiveSession, error: str) -> None:
        sess.runner.stop("error", error)
        self.store.update(sess.id, status="failed", end_reason="error", error=error[:2000])
        self._release(sess)

    def _release(self, sess: LiveSession) -> None:
        with self._lock:
            self.live.pop(sess.id, None)
        try:
            sess.runner.env.close()
        except Exception:
            pass

    # -- read --------------------------------------------------------------------------
    def describe(self, sid: str, key: str, steps: bool = True) -> dict:
        row = self._session(sid, key)
        if self.verifier is not None:
            self.verifier.attach(row)
        if steps:
            row["transcript"] = self.store.steps(sid)
        sess = self.live.get(sid)
        if sess is not None and sess.runner.memory is not None:
            row["memory_examples"] = sess.runner.ep.examples
        return row

    def list(self, key: str) -> list[dict]:
        rows = self.store.list(key if self.api_keys else None)
        return [self.verifier.attach(r) for r in rows] if self.verifier is not None else rows

    def shutdown(self) -> None:
        for sess in list(self.live.values()):
            sess.cancel.set()


def _make_env(name: str):
    from envs.registry import make_env

    try:
        return make_env(name)
    except ImportError as e:
        raise ApiError(400, "environment_unavailable", str(e)) from None


def _build_policy(spec: dict, task: Task):
    from agent.policy_factory import PolicySpec, build_policy

    if spec.get("kind") == "scripted":
        actions = spec.get("actions")
        if not isinstance(actions, list):
            raise ApiError(400, "invalid_policy", "policy kind 'scripted' needs 'actions': a list of outputs to replay")
        return build_policy(PolicySpec(kind="scripted", script={task.task_id: actions}))
    if spec.get("kind") == "model":
        missing = [k for k in ("base_url", "model") if not spec.get(k)]
        if missing:
            raise ApiError(400, "invalid_policy", f"policy kind 'model' needs {' and '.join(missing)}")
        _check_model_endpoint(spec)
    try:
        return build_policy(spec)
    except (ValueError, TypeError, KeyError) as e:
        raise ApiError(400, "invalid_policy", str(e)) from None


def _check_model_endpoint(spec: dict) -> None:
    """Fail at creation, with a specific error, when the model server is down or lacks the model."""
    try:
        check_model_endpoint(spec, timeout_s=float(spec.get("connect_timeout_s", 3.0)))
    except ModelEndpointError as e:
        raise ApiError(400 if e.code == "unknown_model" else 424, e.code, str(e)) from None


def _runner_config(req: dict) -> RunnerConfig:
    limits, extra = req.get("limits") or {}, req.get("runner") or {}
    try:
        cfg = RunnerConfig(**{**extra, **limits})
        MemoryConfig(**cfg.memory)
        from agent.safety import SafetyGuard

        SafetyGuard(cfg.safety, cfg.confirm)
    except (TypeError, ValueError) as e:
        raise ApiError(400, "invalid_runner", f"bad runner/limits: {e}") from None
    return cfg
