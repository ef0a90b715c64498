"""`lam agent serve --verifier`: a real server process scores each finished session. A policy that replies
"Done." after a partial call sequence is flagged, the expert's session is not, confirm mode asks for
confirmation, and a server without a verifier returns exactly the session JSON it always did."""
import sys
import time

import httpx
import pytest

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy
from envs.base import Task
from envs.registry import make_env
from serving.launch import ServerProcess, find_free_port, popen_logged
from tests.training.verifier_episodes import tiny_verifier

SESSION_KEYS = {"id", "env", "task", "policy", "runner", "status", "created", "updated", "steps", "success",
                "claimed_done", "claim", "end_reason", "error", "progress", "false_success", "invalid_actions",
                "blocked_actions", "transcript", "rebuilds", "diverged_step"}


def _serve(db, *args) -> ServerProcess:
    port = find_free_port()
    proc, log = popen_logged([sys.executable, "-m", "cluster.cli", "agent", "serve", "--port", str(port),
                              "--db", str(db), *args], prefix="lam-agent-verifier-")
    return ServerProcess(proc, "127.0.0.1", port, log, "agent-api").wait_healthy(120)


def _run(client, body) -> dict:
    sid = client.post("/v1/sessions", json=body).json()["id"]
    deadline = time.time() + 60
    while (row := client.get(f"/v1/sessions/{sid}").json())["status"] in ("idle", "running") and time.time() < deadline:
        time.sleep(0.05)
    return row


def _partial_tasks(n: int) -> list[tuple[Task, list[str]]]:
    """n unseen L2 tasks (two requests) and the expert's first call only: a partial solution each."""
    found = []
    for seed in range(900, 1000):
        task = Task("toolworld", "L2", seed, "test")
        ep = run_episode(make_env("toolworld"), ExpertPolicy(), task, RunnerConfig(max_steps=8))
        calls = [s.action for s in ep.steps if s.tool_calls]
        if ep.success and len(calls) >= 2:
            found.append((task, calls[:1]))
            if len(found) == n:
                return found
    raise AssertionError("too few two-call L2 tasks")


@pytest.fixture(scope="module")
def verifier_path(tmp_path_factory):
    return tiny_verifier(tmp_path_factory.getbasetemp() / "tiny-verifier") / "best"


def test_a_partial_claim_is_flagged_and_a_correct_one_is_not(verifier_path, tmp_path):
    # Three unseen tasks, each run twice: the expert's first call then "Done." (partial), and the expert.
    # A verifier is a classifier (the tiny one here: 37 of 40 such partials flagged, 0 of 40 correct
    # sessions): every partial must score below its task's correct session, the correct ones must pass,
    # and at most one partial of three may slip under the threshold.
    tasks = _partial_tasks(3)
    for mode in ("flag", "confirm"):
        server = _serve(tmp_path / f"{mode}.db", "--verifier", str(verifier_path), "--verifier-mode", mode)
        try:
            c = httpx.Client(base_url=server.root_url, timeout=60)
            flagged = 0
            for task, first_call in tasks:
                where = {"env": "toolworld", "level": task.level, "seed": task.seed, "split": "test"}
                partial = {**where, "policy": {"kind": "scripted", "actions": first_call + ["Done."]}}
                bad, good = _run(c, partial), _run(c, {**where, "policy": {"kind": "expert"}})
                assert bad["claimed_done"] and not bad["success"] and good["success"]  # the environment's truth
                assert not good["verification"]["flagged"], good["verification"]
                assert bad["verification"]["score"] < good["verification"]["score"], (bad, good)
                assert bad["verification"]["model"].startswith(("scratch:", "lam-head:"))
                flagged += bad["verification"]["flagged"]
                if mode == "confirm":
                    assert bad["verification"]["confirm"] is bad["verification"]["flagged"]
                    assert good["verification"]["confirm"] is False
                listed = {s["id"]: s for s in c.get("/v1/sessions").json()["sessions"]}
                assert listed[bad["id"]]["verification"] == bad["verification"]
            assert flagged >= 2, f"only {flagged} of 3 partial sessions flagged"
        finally:
            server.stop()
    # without a verifier: the session JSON is exactly today's
    server = _serve(tmp_path / "plain.db")
    try:
        c = httpx.Client(base_url=server.root_url, timeout=60)
        task, first_call = tasks[0]
        partial = {"env": "toolworld", "level": task.level, "seed": task.seed, "split": "test",
                   "policy": {"kind": "scripted", "actions": first_call + ["Done."]}}
        row = _run(c, partial)
        assert set(row) == SESSION_KEYS and row["false_success"]
        assert all("verification" not in s for s in c.get("/v1/sessions").json()["sessions"])
    finally:
        server.stop()


def test_a_bad_verifier_stops_lam_agent_serve_with_one_line(tmp_path):
    import subprocess

    r = subprocess.run([sys.executable, "-m", "cluster.cli", "agent", "serve", "--port", str(find_free_port()),
                        "--db", str(tmp_path / "s.db"), "--verifier", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "lam agent: error:" in r.stderr and "not a verifier checkpoint" in r.stderr
