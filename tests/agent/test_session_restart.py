"""Crash-safe sessions on a real server process (127.0.0.1): SIGKILL by PID mid-session, restart on the
same store, and the live sessions come back: an idle one takes its next steps and reaches the verdict
an uninterrupted run reaches, a running one runs on to its end, a tampered record comes back
`interrupted` naming the step. One process owns a store: a second server on it exits with the owner's PID.

    python -m pytest -q tests/agent/test_session_restart.py
"""
import os
import signal
import sqlite3
import sys
import time

import httpx

from serving.launch import ServerProcess, find_free_port, popen_logged
from tests.agent.fake_openai import FakeOpenAI


def _start(db) -> ServerProcess:
    port = find_free_port()
    proc, log = popen_logged([sys.executable, "-m", "agent.api", "--port", str(port), "--db", str(db)],
                             prefix="lam-agent-restart-")
    return ServerProcess(proc, "127.0.0.1", port, log, "agent-api").wait_healthy(120)


def _wait(c, sid, timeout=60):
    deadline = time.time() + timeout
    while True:
        row = c.get(f"/v1/sessions/{sid}").json()
        if row["status"] not in ("idle", "running") or time.time() > deadline:
            return row
        time.sleep(0.1)


EXPERT = {"env": "babyai", "level": "BabyAI-GoToLocal-v0", "seed": 11, "run": False}


def test_sigkill_restart_rebuilds_idle_and_running_sessions_and_catches_a_tampered_one(tmp_path):
    db = tmp_path / "sessions.db"
    server = _start(db)
    with FakeOpenAI(["turn left"] * 10 + ["done"], delay=0.25) as url:  # a slow model: running while we kill
        try:
            c = httpx.Client(base_url=server.root_url, timeout=60)
            ref = c.post("/v1/sessions", json=EXPERT).json()["id"]  # the uninterrupted run of the same task
            reference = c.post(f"/v1/sessions/{ref}/run?wait=true").json()
            assert reference["status"] == "finished" and reference["steps"] >= 4
            idle = c.post("/v1/sessions", json=EXPERT).json()["id"]
            tampered = c.post("/v1/sessions", json={**EXPERT, "seed": 12}).json()["id"]
            for sid in (idle, idle, tampered, tampered):
                assert c.post(f"/v1/sessions/{sid}/step").json()["status"] == "idle"
            running = c.post("/v1/sessions", json={"env": "babyai", "seed": 4, "policy": {
                "kind": "model", "base_url": url, "model": "m"}}).json()["id"]
            deadline = time.time() + 60
            while c.get(f"/v1/sessions/{running}").json()["steps"] < 3 and time.time() < deadline:
                time.sleep(0.05)
            assert c.get(f"/v1/sessions/{running}").json()["status"] == "running"
            os.kill(server.pid, signal.SIGKILL)  # mid-session, by PID
            server.process.wait(10)
        finally:
            server.stop()  # a no-op after the kill
        with sqlite3.connect(db) as conn:  # the recorded state after step 1 no longer matches the world
            before_kill = conn.execute("SELECT steps FROM sessions WHERE id = ?", (running,)).fetchone()[0]
            conn.execute("UPDATE steps SET digest = '0123456789abcdef' WHERE session_id = ? AND step = 1", (tampered,))

        server = _start(db)
        try:
            c = httpx.Client(base_url=server.root_url, timeout=60)
            health = c.get("/health").json()
            assert health["rebuilt"] == 2 and health["recovered_interrupted"] == 1
            # the tampered one: interrupted, naming the step and why, its transcript still readable
            row = c.get(f"/v1/sessions/{tampered}").json()
            assert row["status"] == "interrupted" and row["diverged_step"] == 1, row
            assert "diverged at step 1" in row["error"] and "state digest" in row["error"]
            assert len(row["transcript"]) == 2
            assert c.post(f"/v1/sessions/{tampered}/step").json()["error"]["code"] == "session_ended"
            # the idle one: its third step, then on to the verdict of the uninterrupted run
            row = c.get(f"/v1/sessions/{idle}").json()
            assert row["status"] == "idle" and row["rebuilds"] == 1 and len(row["transcript"]) == 2
            third = c.post(f"/v1/sessions/{idle}/step").json()
            assert third["steps"] == 3 and third["transcript"][2] == {**reference["transcript"][2],
                                                                      "latency_s": third["transcript"][2]["latency_s"]}
            row = c.post(f"/v1/sessions/{idle}/run?wait=true").json()
            assert (row["status"], row["success"], row["end_reason"], row["steps"]) == (
                reference["status"], reference["success"], reference["end_reason"], reference["steps"])
            assert [s["action"] for s in row["transcript"]] == [s["action"] for s in reference["transcript"]]
            # the running one runs on by itself to its end
            row = _wait(c, running)
            assert row["status"] == "finished" and row["end_reason"] == "claimed_done" and row["rebuilds"] == 1
            assert row["steps"] > before_kill and [s["step"] for s in row["transcript"]] == list(range(row["steps"]))
            # one process owns the store: a second server on it stops at once, naming the owner
            port = find_free_port()
            proc, log = popen_logged([sys.executable, "-m", "agent.api", "--port", str(port), "--db", str(db)],
                                     prefix="lam-agent-second-")
            assert proc.wait(60) != 0
            out = open(log).read()
            assert f"owned by another agent API process (PID {server.pid})" in out, out
            assert c.get("/health").json()["status"] == "ok"
        finally:
            server.stop()


def test_a_graceful_stop_leaves_running_sessions_for_the_next_server(tmp_path):
    """A redeploy (SIGTERM: the app's shutdown) cancels nothing: the running session stays `running` in
    the store and the next manager on it resumes it to the end."""
    from agent.sessions import SessionManager, SessionStore

    db = str(tmp_path / "s.db")
    with FakeOpenAI(["turn left"] * 6 + ["done"], delay=0.1) as url:
        m = SessionManager(SessionStore(db))
        sid = m.create({"env": "babyai", "seed": 4, "policy": {"kind": "model", "base_url": url, "model": "m"}}, "")["id"]
        deadline = time.time() + 30
        while m.describe(sid, "", steps=False)["steps"] < 2 and time.time() < deadline:
            time.sleep(0.05)
        m.shutdown()
        row = m.describe(sid, "", steps=False)
        assert row["status"] == "running" and row["steps"] < 7
        m.store.close()
        m = SessionManager(SessionStore(db))
        assert m.rebuilt == 1
        deadline = time.time() + 30
        while m.describe(sid, "", steps=False)["status"] == "running" and time.time() < deadline:
            time.sleep(0.05)
        row = m.describe(sid, "")
        assert row["status"] == "finished" and row["end_reason"] == "claimed_done" and row["rebuilds"] == 1
        assert [s["step"] for s in row["transcript"]] == list(range(row["steps"]))
        m.shutdown()
        m.store.close()
