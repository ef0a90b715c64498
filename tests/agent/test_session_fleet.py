"""Sessions on Ray actors (data_collection/session_fleet.py) on the project's local Ray: they run as in
process, and when their actors are SIGKILLed (by PID) mid-session the actors are replaced and the
sessions rebuilt from the store: the idle one steps on to the uninterrupted verdict, the running one
runs to its end.

    python -m pytest -q tests/agent/test_session_fleet.py
"""
import os
import signal
import time

from agent.sessions import SessionManager, SessionStore
from tests.agent.fake_openai import FakeOpenAI

EXPERT = {"env": "babyai", "level": "BabyAI-GoToLocal-v0", "seed": 11, "run": False}


def _wait(m, sid, until, timeout=60):
    deadline = time.time() + timeout
    while True:
        row = m.describe(sid, "")
        if until(row) or time.time() > deadline:
            return row
        time.sleep(0.05)


def test_sessions_on_ray_actors_survive_their_actors_dying(tmp_path, ray_local):
    from data_collection.session_fleet import SessionFleet

    fleet = SessionFleet(workers=2, memory_path=str(tmp_path / "memory.jsonl"))
    m = SessionManager(SessionStore(str(tmp_path / "s.db")), host=fleet)
    try:
        assert len(set(fleet.pids)) == 2 and os.getpid() not in fleet.pids
        ref = m.create(EXPERT, "")["id"]
        m.run(ref, "")
        reference = _wait(m, ref, lambda r: r["status"] == "finished")
        assert reference["success"] and reference["steps"] >= 4
        idle = m.create(EXPERT, "")["id"]
        m.step(idle, "")
        m.step(idle, "")
        with FakeOpenAI(["turn left"] * 8 + ["done"], delay=0.2) as url:
            running = m.create({"env": "babyai", "seed": 4, "policy": {"kind": "model", "base_url": url,
                                                                       "model": "m"}}, "")["id"]
            assert fleet.home[idle] != fleet.home[running]  # spread over both actors
            _wait(m, running, lambda r: r["steps"] >= 2)
            dead = fleet.pids
            for pid in dead:
                os.kill(pid, signal.SIGKILL)  # both actors, mid-session
            row = _wait(m, running, lambda r: r["status"] != "running")
            assert row["status"] == "finished" and row["end_reason"] == "claimed_done" and row["rebuilds"] == 1, row
            assert [s["step"] for s in m.store.steps(running)] == list(range(row["steps"]))
        third = m.step(idle, "")  # its actor is gone: rebuilt on the new one, then the third step
        assert third["rebuilds"] == 1 and third["transcript"][2]["action"] == reference["transcript"][2]["action"]
        m.run(idle, "")
        row = _wait(m, idle, lambda r: r["status"] != "running")
        assert (row["status"], row["success"], row["steps"]) == ("finished", True, reference["steps"])
        assert fleet.fleet.replaced >= 1 and not set(dead) & set(fleet.pids)
    finally:
        m.shutdown()
        fleet.shutdown()
        m.store.close()
