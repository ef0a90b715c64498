"""Agent sessions: one episode each, driven step by step or run to completion in a thread, and
persisted in SQLite (agent/session_store.py) so a restart loses none.

Episodes run on a host (agent/session_host.py): in this process, or in Ray actors with
`lam agent serve --ray` (data_collection/session_fleet.py); this module routes, persists and decides
statuses. On start, sessions a previous process left idle or running are rebuilt from their record
(agent/session_rebuild.py: a fresh environment, the recorded steps re-run, the state digest checked
per step): idle ones come back idle, running ones run on, transcripts intact. The same happens to the
sessions of a Ray actor that died. Only a divergence ends a session `interrupted`, naming the step.

Statuses: idle (created, waiting for step/run) · running · finished (the episode ended: see
end_reason, success, claim) · cancelled · failed (the environment or the server broke, see error)
· interrupted (its episode could not be rebuilt: `diverged_step` and `error` say where and why).
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

from agent.episode import RunnerConfig
from agent.memory import MemoryConfig
from agent.policies import ModelEndpointError, check_model_endpoint
from agent.session_host import HostLost, SessionHost, SessionSpec
from agent.session_rebuild import Divergence
from agent.session_store import SessionStore, StoreOwned  # noqa: F401  (the API's import path)
from envs.base import Task

LIVE = ("idle", "running")
TERMINAL = ("finished", "cancelled", "failed", "interrupted")


class ApiError(Exception):
    """An error the API answers with: HTTP status, a stable code, and a message saying what to do."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class LiveSession:
    id: str
    api_key: str
    spec: SessionSpec
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    finished: bool = False  # the episode ended; _finish has not run yet


class SessionManager:
    """Creates, steps, runs and cancels sessions; the HTTP layer (agent/api.py) only translates."""

    def __init__(self, store: SessionStore, api_keys: dict[str, int] | None = None, max_live: int = 64,
                 memory_path: str | None = None, host=None, verifier=None) -> None:
        self.store, self.api_keys, self.max_live = store, api_keys or {}, max_live
        self.host = host if host is not None else SessionHost(memory_path)
        self.verifier = verifier  # agent/verification.py SessionVerifier: scores finished sessions (or None)
        self.live: dict[str, LiveSession] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # the server is going down: leave live sessions for the next one
        t0 = time.perf_counter()
        self.rebuilt, self.recovered = self._rebuild_left_live()  # recovered: the ones that came back interrupted
        self.rebuild_s = time.perf_counter() - t0

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
        _build_policy(policy_spec, task)  # a bad spec answers 400 here, before any worker is asked
        runner_cfg = _runner_config(req)
        _make_env(req["env"]).close()  # a missing package answers 400 here
        sid = uuid.uuid4().hex[:16]
        session = SessionSpec(req["env"], asdict(task), policy_spec, runner_cfg.model_dump())
        try:
            opened = self.host.open(sid, session)
        except HostLost:  # its worker died while opening it: the fleet has replaced it, open again
            opened = self.host.open(sid, session)
        if not opened["ok"]:
            raise ApiError(400, "invalid_task", f"cannot start {task.task_id!r} in {req['env']!r}: {opened['error']}")
        now = time.time()
        public_policy = {k: v for k, v in policy_spec.items() if k != "api_key"}  # a secret is never stored
        self.store.insert({"id": sid, "api_key": key, "env": req["env"], "task": asdict(task), "policy": public_policy,
                           "runner": runner_cfg.model_dump(), "status": "idle", "created": now, "updated": now,
                           "secret": int("api_key" in policy_spec)})
        with self._lock:
            self.live[sid] = LiveSession(sid, key, session)
        if req.get("run", True):
            self.run(sid, key)
        return self.describe(sid, key, steps=False)

    # -- drive -------------------------------------------------------------------------
    def step(self, sid: str, key: str) -> dict:
        sess = self._live(sid, key, "step")
        if sess.thread is not None:
            raise ApiError(409, "session_running", f"session {sid} is running to completion; GET it or DELETE it")
        with sess.lock:
            if sid in self.live and self._advance(sess) and sess.finished:
                self._finish(sess)
        return self.describe(sid, key)

    def run(self, sid: str, key: str) -> dict:
        sess = self._live(sid, key, "run")
        self._start_thread(sess)
        return self.describe(sid, key, steps=False)

    def _start_thread(self, sess: LiveSession) -> None:
        with sess.lock:
            if sess.thread is None:
                self.store.update(sess.id, status="running")
                sess.thread = threading.Thread(target=self._run, args=(sess,), name=f"session-{sess.id}", daemon=True)
                sess.thread.start()

    def cancel(self, sid: str, key: str) -> dict:
        row = self._session(sid, key)
        sess = self.live.get(sid)
        if sess is None:
            raise ApiError(409, "session_ended", f"session {sid} already ended ({row['status']})")
        sess.cancel.set()
        if sess.thread is None:  # idle: nobody else will notice the flag
            with sess.lock:
                if sid in self.live and self._call(sess, "stop", "cancelled") is not False:
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
            while not sess.finished:
                if self._stopping.is_set():  # stays `running` in the store: the next server rebuilds and resumes it
                    return
                if sess.cancel.is_set():
                    if self._call(sess, "stop", "cancelled") is False:
                        return
                    break
                if not self._advance(sess):
                    return
            self._finish(sess)

    def _call(self, sess: LiveSession, method: str, *args):
        """A host call for this session; a host that lost it (its Ray actor died) gets it rebuilt from the
        store first, once. False when the session ended on the way (a failed rebuild: interrupted)."""
        for attempt in (0, 1):
            try:
                return getattr(self.host, method)(sess.id, *args)
            except HostLost as e:
                if attempt or not self._rebuild(sess, str(e)):
                    if sess.id in self.live:
                        self._end(sess, "interrupted", f"{e}; the rebuild failed too")
                    return False
        return False

    def _advance(self, sess: LiveSession) -> bool:
        """One step, persisted. Anything the runner raises fails this session only."""
        out = self._call(sess, "advance")
        if out is False:
            return False
        if out["error"]:
            self._fail(sess, out["error"])
            return False
        sess.finished = out["finished"]
        counters = {k: out[k] for k in ("steps", "invalid_actions", "blocked_actions", "progress")}
        if "examples" in out:  # the long-term memory of the first step: a rebuild must show the same
            counters["examples"] = sess.spec.examples = out["examples"]
        if out["log"] is not None:
            self.store.add_step(sess.id, out["log"], out["digest"], **counters)
        return True

    def _finish(self, sess: LiveSession) -> None:
        ep = self._call(sess, "finish")
        if ep is False:
            return
        status = "cancelled" if ep.end_reason == "cancelled" else "finished"
        if self.verifier is not None and status == "finished":  # before the status says so: readers see both
            self.verifier.record(sess.id, ep)
        self.store.update(sess.id, status=status, steps=len(ep.steps), success=ep.success, claimed_done=ep.claimed_done,
                          claim=ep.claim, end_reason=ep.end_reason, error=ep.error, progress=ep.progress,
                          false_success=ep.false_success, invalid_actions=ep.invalid_actions,
                          blocked_actions=ep.blocked_actions)
        self._release(sess)

    def _fail(self, sess: LiveSession, error: str) -> None:
        self._end(sess, "failed", error, end_reason="error")

    def _end(self, sess: LiveSession, status: str, error: str, **fields) -> None:
        try:
            self.host.close(sess.id)
        except Exception:  # a dead worker holds nothing to close
            pass
        self.store.update(sess.id, status=status, error=error[:2000], **fields)
        self._release(sess)

    def _release(self, sess: LiveSession) -> None:
        with self._lock:
            self.live.pop(sess.id, None)

    # -- rebuild -----------------------------------------------------------------------
    def _rebuild_left_live(self) -> tuple[int, int]:
        """Rebuild every session a previous process left idle or running; (rebuilt, interrupted)."""
        rebuilt = interrupted = 0
        for row in self.store.live():
            sess = LiveSession(row["id"], row["api_key"], SessionSpec(row["env"], row["task"], row["policy"],
                                                                      row["runner"], row["examples"]))
            with self._lock:
                self.live[sess.id] = sess
            why = "the agent API stopped while this session was " + row["status"]
            if row["secret"]:  # its model key was never stored: it cannot be asked again
                self._end(sess, "interrupted", why + "; its policy's api_key is not stored, so it cannot be "
                          "rebuilt: start a new session", diverged_step=0)
            elif self._rebuild(sess, why):
                rebuilt += 1
                if sess.finished:  # the process died between the last step and its end
                    with sess.lock:
                        self._finish(sess)
                elif row["status"] == "running":
                    sess.thread = None
                    self._start_thread(sess)
                continue
            interrupted += 1
        return rebuilt, interrupted

    def _rebuild(self, sess: LiveSession, why: str) -> bool:
        """Rebuild one session on the host from its record; on a divergence it ends interrupted."""
        steps, digests = self.store.steps(sess.id), self.store.digests(sess.id)
        try:
            diverged = self.host.rebuild(sess.id, sess.spec, steps, digests)
        except Exception as e:  # the worker died again, or the spec no longer builds
            diverged = Divergence(len(steps), f"{type(e).__name__}: {e}")
        if diverged is not None:
            self._end(sess, "interrupted", f"{why}; rebuilding it diverged at step {diverged.step}: {diverged.reason}",
                      diverged_step=diverged.step, end_reason="rebuild_diverged")
            return False
        sess.finished = bool(steps) and self.host.finished(sess.id)
        row = self.store.get(sess.id)
        self.store.update(sess.id, rebuilds=(row["rebuilds"] if row else 0) + 1)
        return True

    # -- read --------------------------------------------------------------------------
    def describe(self, sid: str, key: str, steps: bool = True) -> dict:
        row = self._session(sid, key)
        if self.verifier is not None:
            self.verifier.attach(row)
        if steps:
            row["transcript"] = self.store.steps(sid)
        examples = row.pop("examples")
        if examples is not None:
            row["memory_examples"] = [{k: x[k] for k in ("episode_id", "score", "request")} for x in examples]
        return row

    def list(self, key: str) -> list[dict]:
        rows = self.store.list(key if self.api_keys else None)
        for row in rows:
            row.pop("examples")
        return [self.verifier.attach(r) for r in rows] if self.verifier is not None else rows

    def shutdown(self, wait_s: float = 5.0) -> None:
        """The server stops (SIGTERM, a redeploy): running sessions end their step in flight and stay
        `running` in the store, idle ones `idle`; the next server on the store rebuilds them."""
        self._stopping.set()
        deadline = time.monotonic() + wait_s
        for sess in list(self.live.values()):
            if sess.thread is not None:
                sess.thread.join(max(0.0, deadline - time.monotonic()))


def _make_env(name: str):
    from envs.registry import make_env

    try:
        return make_env(name)
    except ImportError as e:
        raise ApiError(400, "environment_unavailable", str(e)) from None


def _build_policy(spec: dict, task: Task):
    """Check a policy spec as the session's host will build it: a specific 4xx for what is wrong."""
    from agent.session_host import build_session_policy

    if spec.get("kind") == "scripted" and not isinstance(spec.get("actions"), list):
        raise ApiError(400, "invalid_policy", "policy kind 'scripted' needs 'actions': a list of outputs to replay")
    if spec.get("kind") == "model":
        missing = [k for k in ("base_url", "model") if not spec.get(k)]
        if missing:
            raise ApiError(400, "invalid_policy", f"policy kind 'model' needs {' and '.join(missing)}")
        _check_model_endpoint(spec)
    try:
        return build_session_policy(spec, task)
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
