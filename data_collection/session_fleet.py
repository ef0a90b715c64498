"""Agent sessions on the Ray fleet: `lam agent serve --ray` / `--workers N`.

    lam agent serve --workers 4 --db runs/agent/sessions.db     # starts a local Ray (127.0.0.1) with 4 actors
    RAY_ADDRESS=127.0.0.1:6379 lam agent serve --ray            # joins a running cluster, one actor per CPU

Sessions' environments and policies live in the one fleet's actors (data_collection/fleet.py), each
actor holding a `SessionHost` (agent/session_host.py) with many sessions; the API process only routes
each session to its actor and persists its steps. `SessionFleet` has the host's methods, so the
session manager (agent/sessions.py) cannot tell it from the in-process host. A session is opened on the
actor with the fewest; an actor that dies is replaced (Fleet.call) and the sessions it held are found
missing on their next call (`HostLost`): the manager rebuilds each from the store on the new actor
(agent/session_rebuild.py) and goes on. Ray is stopped on exit (SIGTERM included) only if this
process started it; a SIGKILLed server can leave some of the local Ray's agent processes behind (Ray's
own fate-sharing misses them), so long-lived deployments join a cluster (RAY_ADDRESS) instead.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections import Counter

from agent import cli as agent_cli
from agent.api import serve
from agent.session_host import HostLost, SessionHost, SessionSpec
from data_collection.fleet import Fleet

# Calls one actor runs at once (threads): a session waiting on its model does not hold up the others.
ACTOR_CONCURRENCY = 16


def session_call(actor, chunk: tuple, attempt: int = 0) -> dict:
    """The fleet's work for sessions: one SessionHost method on this actor's host. A session id the host
    does not hold (its actor was replaced since) answers {"lost": True} rather than raising."""
    method, sid, args, memory_path = chunk
    host = actor.cached("sessions", lambda: SessionHost(memory_path))
    if method not in ("open", "rebuild") and sid not in host.runners:
        return {"lost": True}
    return {"value": getattr(host, method)(sid, *args)}


class SessionFleet:
    """SessionHost's interface over Ray actors; thread-safe (the manager's session threads call it)."""

    def __init__(self, workers: int = 0, memory_path: str | None = None, cpus: float = 1.0) -> None:
        import ray

        from data_collection.ray_local import init_ray

        was_up = ray.is_initialized()
        try:
            started = init_ray()  # RAY_ADDRESS, else a private local cluster
            n = workers or max(1, int(ray.cluster_resources().get("CPU", 1) / cpus))
            self.fleet = Fleet(n, env="", runner={}, cpus=cpus, ray_restarts=0, concurrency=ACTOR_CONCURRENCY)
        except BaseException:  # a SIGTERM or an error while Ray starts: stop what was started
            if not was_up:
                ray.shutdown()
            raise
        self.fleet._started_ray = started  # the fleet's close() stops what this process started
        self.ray, self.memory_path = ray, memory_path
        self.home: dict[str, int] = {}  # session id -> the actor slot it lives on
        self._lock = threading.Lock()

    @property
    def pids(self) -> list[int]:
        return list(self.fleet.pids)

    def _slot(self) -> int:
        with self._lock:
            load = Counter(self.home.values())
        return min(range(len(self.fleet.actors)), key=lambda s: load[s])

    def _call(self, slot: int, method: str, sid: str, *args):
        try:
            out = self.fleet.call(slot, session_call, (method, sid, args, self.memory_path))
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError) as e:
            raise HostLost(sid, f"its Ray actor died ({type(e).__name__})") from None
        if out.get("lost"):
            raise HostLost(sid, "its Ray actor was replaced")
        return out["value"]

    def _on(self, sid: str, method: str, *args):
        with self._lock:
            slot = self.home[sid]
        return self._call(slot, method, sid, *args)

    # -- SessionHost's methods -------------------------------------------------------
    def open(self, sid: str, spec: SessionSpec) -> dict:
        slot = self._slot()
        with self._lock:
            self.home[sid] = slot  # counted at once, so concurrent opens spread over the actors
        out = self._call(slot, "open", sid, spec)
        if not out["ok"]:
            with self._lock:
                self.home.pop(sid, None)
        return out

    def rebuild(self, sid: str, spec: SessionSpec, steps: list[dict], digests: list):
        with self._lock:
            slot = self.home.get(sid)
        if slot is None:
            slot = self._slot()
            with self._lock:
                self.home[sid] = slot
        return self._call(slot, "rebuild", sid, spec, steps, digests)

    def advance(self, sid: str) -> dict:
        return self._on(sid, "advance")

    def stop(self, sid: str, reason: str, error: str = "") -> None:
        return self._on(sid, "stop", reason, error)

    def finish(self, sid: str):
        out = self._on(sid, "finish")
        with self._lock:
            self.home.pop(sid, None)
        return out

    def close(self, sid: str) -> None:
        with self._lock:
            slot = self.home.pop(sid, None)
        if slot is not None:
            try:
                self._call(slot, "close", sid)
            except HostLost:
                pass

    def finished(self, sid: str) -> bool:
        return self._on(sid, "finished")

    def shutdown(self) -> None:
        """Stop the actors (and Ray, if this process started it)."""
        self.fleet.close()


# -- `lam agent`: the agent stage's command line, with the fleet behind `serve --ray` ----------------
def add_args(s: argparse.ArgumentParser) -> None:
    agent_cli.add_args(s)


def main(a: argparse.Namespace) -> int:
    if a.action != "serve" or not (a.ray or a.workers):
        return agent_cli.main(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped while Ray starts: shut it down (finally)
    fleet = SessionFleet(a.workers, memory_path=a.db + ".memory.jsonl")
    print(f"sessions run in {len(fleet.pids)} Ray actors (PIDs {', '.join(map(str, fleet.pids))})", flush=True)
    try:
        serve(a, host=fleet)
    finally:
        fleet.shutdown()
    return 0


if __name__ == "__main__":
    from agent.api import add_args as serve_args

    args = serve_args(argparse.ArgumentParser(prog="python -m data_collection.session_fleet")).parse_args()
    args.action = "serve"
    main(args)
