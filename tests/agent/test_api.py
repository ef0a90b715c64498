"""The agent HTTP API on a real server process (127.0.0.1, stopped by PID): sessions, errors,
server-sent events, API keys, and a SIGKILL + restart that loses no session and no row."""
import json
import sqlite3
import sys
import time

import httpx
import pytest

from serving.launch import ServerProcess, find_free_port, popen_logged
from tests.agent.fake_openai import FakeOpenAI


def _start(db, *args) -> ServerProcess:
    port = find_free_port()
    proc, log = popen_logged([sys.executable, "-m", "agent.api", "--port", str(port), "--db", str(db), *args],
                             prefix="lam-agent-api-")
    return ServerProcess(proc, "127.0.0.1", port, log, "agent-api").wait_healthy(120)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    server = _start(tmp_path_factory.mktemp("api") / "sessions.db")
    yield httpx.Client(base_url=server.root_url, timeout=60)
    server.stop()


def _wait(client, sid, headers=None, timeout=60):
    deadline = time.time() + timeout
    while True:
        row = client.get(f"/v1/sessions/{sid}", headers=headers).json()
        if row["status"] not in ("idle", "running") or time.time() > deadline:
            return row
        time.sleep(0.1)


def test_sessions_run_step_and_stream(api):
    r = api.post("/v1/sessions", json={"env": "babyai", "seed": 3})
    assert r.status_code == 201 and r.json()["status"] in ("running", "finished")
    row = _wait(api, r.json()["id"])
    assert row["status"] == "finished" and row["success"] and row["end_reason"] == "success"
    assert len(row["transcript"]) == row["steps"] > 0 and row["transcript"][0]["action"]
    # stepping by hand, with a policy that emits garbage first: feedback, and the session goes on
    r = api.post("/v1/sessions", json={"env": "babyai", "seed": 3, "run": False,
                                       "policy": {"kind": "scripted", "actions": ["%%%", "go forward", "done"]}})
    sid = r.json()["id"]
    first = api.post(f"/v1/sessions/{sid}/step").json()
    assert first["status"] == "idle" and "invalid action" in first["transcript"][0]["feedback"]
    assert api.post(f"/v1/sessions/{sid}/run?wait=true").json()["status"] == "finished"
    assert api.post(f"/v1/sessions/{sid}/step").json()["error"]["code"] == "session_ended"
    # one server-sent event per step, then the end
    with api.stream("GET", f"/v1/sessions/{sid}/events") as s:
        events = [ln for ln in s.iter_lines() if ln.startswith("event:")]
    assert events == ["event: step"] * 3 + ["event: end"]


def test_bfcl_session_with_tool_calls(api):
    r = api.post("/v1/sessions", json={"env": "bfcl", "level": "multi_turn_base", "seed": 5, "split": "all"})
    if r.status_code == 400 and r.json()["error"]["code"] == "environment_unavailable":
        pytest.skip(r.json()["error"]["message"])
    row = _wait(api, r.json()["id"])
    assert row["status"] == "finished" and row["success"] and row["claim"] == "done"
    assert any(s["tool_calls"] for s in row["transcript"]) and row["transcript"][-1]["info"]["task_check"]["valid"]


@pytest.mark.parametrize("body, status, code", [
    ({"env": "nope"}, 400, "unknown_environment"),
    ({"env": "babyai", "level": "BabyAI-Nope-v0"}, 400, "unknown_level"),
    ({"env": "babyai", "seed": -1}, 422, "invalid_request"),
    ({"env": "babyai", "colour": "red"}, 422, "invalid_request"),
    ({"env": "babyai", "policy": {"kind": "telepathy"}}, 400, "invalid_policy"),
    ({"env": "babyai", "policy": {"kind": "model", "model": "m"}}, 400, "invalid_policy"),
    ({"env": "babyai", "policy": {"kind": "model", "base_url": "http://127.0.0.1:9/v1", "model": "m"}}, 424,
     "model_unreachable"),
    ({"env": "babyai", "runner": {"safety": {"go forward": "maybe"}}}, 422, "invalid_request"),
    ({"env": "babyai", "runner": {"memory": {"short_term_k": 2, "bogus": 1}}}, 400, "invalid_runner"),
])
def test_bad_requests_get_specific_errors(api, body, status, code):
    r = api.post("/v1/sessions", json=body)
    assert r.status_code == status and r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_broken_inputs_never_take_the_server_down(api):
    assert api.post("/v1/sessions", content=b"{not json", headers={"content-type": "application/json"}).json()[
        "error"]["message"].startswith("the request body is not valid JSON")
    assert api.get("/v1/sessions/nope").status_code == 404
    with FakeOpenAI([503]) as url:  # passes the check at creation, then fails every completion
        r = api.post("/v1/sessions", json={"env": "babyai", "policy": {"kind": "model", "base_url": url, "model": "m",
                                                                       "retries": 1, "timeout_s": 5}})
        row = _wait(api, r.json()["id"])
    assert row["status"] == "finished" and row["end_reason"] == "policy_error" and "503" in row["error"]
    assert api.get("/health").json()["status"] == "ok"
    assert _wait(api, api.post("/v1/sessions", json={"env": "babyai", "seed": 1}).json()["id"])["success"]


def test_api_keys_and_per_key_limits(tmp_path):
    server = _start(tmp_path / "s.db", "--api-key", "k1:1", "--api-key", "k2")
    try:
        c = httpx.Client(base_url=server.root_url, timeout=60)
        k1, k2 = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
        assert c.post("/v1/sessions", json={"env": "babyai"}).json()["error"]["code"] == "unauthorized"
        sid = c.post("/v1/sessions", json={"env": "babyai", "run": False}, headers=k1).json()["id"]
        r = c.post("/v1/sessions", json={"env": "babyai", "run": False}, headers=k1)
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_sessions"
        assert c.get(f"/v1/sessions/{sid}", headers=k2).status_code == 404  # other keys cannot see it
        assert c.get("/v1/sessions", headers=k2).json()["sessions"] == []
        assert c.delete(f"/v1/sessions/{sid}", headers=k1).json()["status"] == "cancelled"
        assert c.post("/v1/sessions", json={"env": "babyai", "run": False}, headers=k1).status_code == 201
    finally:
        server.stop()


def test_sigkill_and_restart_keep_every_session_with_a_correct_status(tmp_path):
    db = tmp_path / "sessions.db"
    server = _start(db)
    try:
        c = httpx.Client(base_url=server.root_url, timeout=60)
        done = c.post("/v1/sessions", json={"env": "babyai", "seed": 2}).json()["id"]
        assert _wait(c, done)["status"] == "finished"
        idle = c.post("/v1/sessions", json={"env": "babyai", "run": False}).json()["id"]
        c.post(f"/v1/sessions/{idle}/step")
        with FakeOpenAI(["turn left"], delay=0.2) as url:  # a slow model keeps the session running
            long = c.post("/v1/sessions", json={"env": "babyai", "policy": {"kind": "model", "base_url": url,
                                                                             "model": "m"}}).json()["id"]
            deadline = time.time() + 60
            while c.get(f"/v1/sessions/{long}").json()["steps"] < 3 and time.time() < deadline:
                time.sleep(0.05)
            server.process.kill()  # SIGKILL, mid-session
            server.process.wait(10)
    finally:
        server.stop()  # by its PID; a no-op after the kill
    server = _start(db)
    try:
        c = httpx.Client(base_url=server.root_url, timeout=60)
        rows = {r["id"]: r for r in c.get("/v1/sessions").json()["sessions"]}
        assert rows[done]["status"] == "finished" and rows[done]["success"]
        # rebuilt from the store (tests/agent/test_session_restart.py checks what they do next)
        assert rows[idle]["status"] == "idle" and rows[long]["status"] in ("running", "finished")
        assert rows[idle]["rebuilds"] == rows[long]["rebuilds"] == 1
        for sid, row in rows.items():  # every step row written whole, the counters agree with them
            steps = c.get(f"/v1/sessions/{sid}").json()["transcript"]
            assert [s["step"] for s in steps] == list(range(row["steps"]))
            assert all(json.dumps(s) for s in steps)
        assert c.get("/health").json()["rebuilt"] == 2 and c.get("/health").json()["recovered_interrupted"] == 0
    finally:
        server.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
