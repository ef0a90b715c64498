"""Bad input to sessions gets a specific 4xx or a clear terminal status, never a 500 and never another
key's data: another key's session id on every route, a policy URL that accepts and never answers, a
stored session whose environment is gone or whose record diverges when it is rebuilt.

    python -m pytest -q tests/agent/test_session_bad_input.py
"""
import json
import socket
import sqlite3
import sys

import httpx

from agent.sessions import SessionManager, SessionStore
from serving.launch import ServerProcess, find_free_port, popen_logged


def test_another_keys_session_is_404_on_every_route_and_shows_nothing(tmp_path):
    port = find_free_port()
    proc, log = popen_logged([sys.executable, "-m", "agent.api", "--port", str(port), "--db", str(tmp_path / "s.db"),
                              "--api-key", "k1", "--api-key", "k2"], prefix="lam-agent-keys-")
    server = ServerProcess(proc, "127.0.0.1", port, log, "agent-api").wait_healthy(120)
    try:
        c = httpx.Client(base_url=server.root_url, timeout=60)
        k1, k2 = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
        mine = c.post("/v1/sessions", json={"env": "babyai", "seed": 77, "run": False}, headers=k1).json()
        c.post(f"/v1/sessions/{mine['id']}/step", headers=k1)
        sid = mine["id"]
        for method, path in [("GET", ""), ("POST", "/step"), ("POST", "/run"), ("DELETE", ""), ("GET", "/events")]:
            r = c.request(method, f"/v1/sessions/{sid}{path}", headers=k2)
            assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found", (method, path, r.text)
            assert "77" not in r.text and "transcript" not in r.text  # nothing of the session leaks
        assert c.get("/v1/sessions", headers=k2).json()["sessions"] == []
        assert c.get(f"/v1/sessions/{sid}", headers={"Authorization": "Bearer k3"}).status_code == 401
        row = c.get(f"/v1/sessions/{sid}", headers=k1).json()  # untouched by the other key's attempts
        assert row["status"] == "idle" and row["steps"] == 1
    finally:
        server.stop()


def test_a_policy_url_that_never_answers_is_424_within_the_connect_timeout(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does), never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
    from agent.api import create_app
    from fastapi.testclient import TestClient

    try:
        with TestClient(create_app(str(tmp_path / "s.db"))) as c:
            r = c.post("/v1/sessions", json={"env": "babyai", "policy": {
                "kind": "model", "base_url": url, "model": "m", "connect_timeout_s": 0.5}})
            assert r.status_code == 424 and r.json()["error"]["code"] == "model_unreachable"
            assert url in r.json()["error"]["message"]
            assert c.get("/v1/sessions").json()["sessions"] == []  # nothing half-created
    finally:
        silent.close()


def test_stored_sessions_that_cannot_come_back_end_interrupted_with_the_reason(tmp_path):
    """A session whose environment is no longer registered, and one whose record diverges (an action the
    expert never takes), come back interrupted; the healthy one beside them comes back idle."""
    db = str(tmp_path / "s.db")
    m = SessionManager(SessionStore(db))
    ids = [m.create({"env": "babyai", "seed": s, "run": False}, "")["id"] for s in (11, 12, 13)]
    for sid in ids:
        m.step(sid, "")
        assert m.step(sid, "")["status"] == "idle"
    m.store.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE sessions SET env = 'gone' WHERE id = ?", (ids[0],))
    body = json.loads(conn.execute("SELECT body FROM steps WHERE session_id = ? AND step = 1", (ids[1],)).fetchone()[0])
    body["raw_output"] = body["action"] = "drop"
    conn.execute("UPDATE steps SET body = ? WHERE session_id = ? AND step = 1", (json.dumps(body), ids[1]))
    conn.close()
    m = SessionManager(SessionStore(db))
    gone, changed, fine = (m.describe(sid, "") for sid in ids)
    assert (m.rebuilt, m.recovered) == (1, 2)
    assert gone["status"] == "interrupted" and "unknown environment 'gone'" in gone["error"]
    assert changed["status"] == "interrupted" and changed["diverged_step"] == 1 and "at step 1" in changed["error"]
    assert fine["status"] == "idle" and len(fine["transcript"]) == 2
    m.store.close()
