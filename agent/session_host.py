"""Where sessions' environments and policies live: this process (`SessionHost`), or Ray actors that
each hold one (data_collection/session_fleet.py, `lam agent serve --ray`). The API process
(agent/sessions.py) only routes, persists and decides statuses; a host only runs episodes.

    host = SessionHost(memory_path="runs/agent/sessions.db.memory.jsonl")
    host.open(sid, spec)           # {"ok": True} or {"ok": False, "error": "..."} (a task the env rejects)
    host.advance(sid)              # {"log": StepLog dict or None, "digest", "finished", counters, "error"}
    host.finish(sid)               # the Episode; the environment is closed and the session dropped
    host.rebuild(sid, spec, steps, digests)   # after a crash: None, or the Divergence

Every method takes and returns plain data (dataclasses, dicts), so the same calls cross Ray unchanged.
A host that lost sessions (its actor died) raises `HostLost`; the manager rebuilds them and calls again.
"""
from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass

from agent.episode import Episode, EpisodeRunner, RunnerConfig
from agent.memory import EpisodicStore, Memory, MemoryConfig
from agent.session_rebuild import Divergence, rebuild
from envs.base import Task, rebuildable


class HostLost(Exception):
    """The host that held session `sid` died; it has been replaced, without the session."""

    def __init__(self, sid: str, why: str = "") -> None:
        super().__init__(f"the worker holding session {sid} died{': ' + why if why else ''}")
        self.sid = sid


@dataclass
class SessionSpec:
    """Everything that builds a session's runner again: stored with the session, sent to its host."""

    env: str
    task: dict  # Task's fields
    policy: dict  # a build_policy spec; "scripted" carries its "actions"
    runner: dict  # RunnerConfig's fields
    examples: list[dict] | None = None  # long-term memory the first step retrieved (a rebuild reuses it)


def build_session_policy(spec: dict, task: Task):
    """The policy of a session spec (a scripted session's actions become a script for its task)."""
    from agent.policy_factory import PolicySpec, build_policy

    if spec.get("kind") == "scripted":
        return build_policy(PolicySpec(kind="scripted", script={task.task_id: list(spec.get("actions") or [])}))
    return build_policy(spec)


class SessionHost:
    """Runners of many sessions, keyed by session id; thread-safe per session (the manager holds a
    session's lock around each call)."""

    def __init__(self, memory_path: str | None = None) -> None:
        self.memory_store = EpisodicStore(memory_path)
        self.runners: dict[str, EpisodeRunner] = {}
        self._lock = threading.Lock()

    def pid(self) -> int:
        return os.getpid()

    def _runner(self, sid: str, spec: SessionSpec) -> EpisodeRunner:
        from envs.registry import make_env

        task = Task(**spec.task)
        cfg = RunnerConfig(**spec.runner)
        mem = MemoryConfig(**cfg.memory)
        policy = build_session_policy(spec.policy, task)
        return EpisodeRunner(make_env(spec.env), policy, task, cfg, episode_id=sid,
                             memory=Memory(mem, self.memory_store) if mem.enabled else None)

    def open(self, sid: str, spec: SessionSpec) -> dict:
        runner = self._runner(sid, spec)
        try:
            runner.start()
        except (ValueError, KeyError, IndexError) as e:
            runner.env.close()
            return {"ok": False, "error": str(e)}
        with self._lock:
            self.runners[sid] = runner
        return {"ok": True, "rebuildable": rebuildable(runner.env)}

    def advance(self, sid: str) -> dict:
        runner = self.runners[sid]
        first = not runner.ep.steps
        try:
            log = runner.advance()
        except Exception as e:  # an environment crash or a bug: this session fails, the host goes on
            return {"error": f"{type(e).__name__}: {e}"}
        ep, env = runner.ep, runner.env
        out = {"log": asdict(log) if log is not None else None, "finished": runner.finished, "steps": len(ep.steps),
               "invalid_actions": ep.invalid_actions, "blocked_actions": ep.blocked_actions,
               "progress": runner.progress, "error": None,
               "digest": env.state_digest() if log is not None and rebuildable(env) else None}
        if first and runner.memory is not None:
            out["examples"] = runner.memory.examples
        return out

    def stop(self, sid: str, reason: str, error: str = "") -> None:
        self.runners[sid].stop(reason, error)

    def finish(self, sid: str) -> Episode:
        runner = self.runners[sid]
        try:
            return runner.finish()
        finally:
            self.close(sid)

    def close(self, sid: str) -> None:
        with self._lock:
            runner = self.runners.pop(sid, None)
        if runner is not None:
            try:
                runner.env.close()
            except Exception:
                pass

    def rebuild(self, sid: str, spec: SessionSpec, steps: list[dict], digests: list) -> Divergence | None:
        """The session's runner rebuilt from its record (agent/session_rebuild.py); on a divergence it is dropped."""
        runner = self._runner(sid, spec)
        diverged = rebuild(runner, steps, digests, spec.examples)
        if diverged is not None:
            runner.env.close()
            return diverged
        with self._lock:
            self.runners[sid] = runner
        return None

    def finished(self, sid: str) -> bool:
        return self.runners[sid].finished

    def live(self) -> list[str]:
        return list(self.runners)
