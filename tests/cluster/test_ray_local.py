"""The local Ray that lam starts listens on loopback only, and joining a running cluster through
RAY_ADDRESS either works or fails in seconds with one line saying why.

    .venv/bin/python -m pytest -q tests/cluster/test_ray_local.py
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.processes import stop_processes

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict:
    """This environment without any RAY_* variable (tests/conftest.py sets the loopback switch for the
    test process itself; a user's shell does not), the checkout first on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", **extra)
    return env


def _stop_tree(proc: subprocess.Popen) -> None:
    """Stop a process started in its own session and everything below it: only what this test started."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        tree = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the whole session first, so no child outlives its parent's stop
    except ProcessLookupError:
        pass
    stop_processes(tree, grace_s=10)
    proc.wait(timeout=5)


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


# The driver imports ray before data_collection.ray_local, as `lam collect` (data_collection/fleet.py) and
# `lam eval` (eval/evaluator.py) do, then runs a task and an actor so worker processes exist too.
_DRIVER = """
import sys, ray
from data_collection.ray_local import init_ray
init_ray(num_cpus=1)
@ray.remote
class A:
    def ping(self): return 1
@ray.remote
def f(): return 1
a = A.remote()
assert ray.get([f.remote(), a.ping.remote()]) == [1, 1]
print("READY", flush=True)
sys.stdin.readline()
ray.shutdown()
"""


# issue 21 item 5
@pytest.mark.timeout(180)
def test_every_socket_of_the_local_ray_listens_on_loopback():
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER], cwd=REPO, env=_clean_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", f"driver did not start Ray: {line}{proc.stderr.read()[-3000:] if proc.poll() is not None else ''}"
        time.sleep(2)  # agents open their last ports right after registering
        # Only this driver's cluster: the driver and its descendants (GCS, raylet, dashboard, agents, workers).
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        listening, names = [], set()
        for p in tree:
            try:
                name = p.name()
                conns = p.net_connections(kind="inet")
            except psutil.Error:
                continue
            names.add(name)
            for c in conns:
                if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and c.laddr and not c.raddr):
                    listening.append((name, c.laddr.ip, c.laddr.port))
        # the check is not vacuous: the main components were found and they listen
        assert {"gcs_server", "raylet"} <= names, names
        assert any(n.startswith("ray::DashboardAgent") for n in names) and any(n.startswith("ray::RuntimeEnvAgent") for n in names), names
        assert {n for n, _, _ in listening} >= {"gcs_server", "raylet"}, listening
        assert len(listening) >= 6, listening
        exposed = [s for s in listening if not _is_loopback(s[1])]
        assert not exposed, f"Ray sockets not on loopback: {exposed}"
    finally:
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _stop_tree(proc)


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head started by `ray start --head` on 127.0.0.1 with token authentication, under a private
    temp dir and free ports, in its own session; stopped by killing that session (never `ray stop`)."""
    temp_dir = tempfile.mkdtemp(prefix="lj", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    token, port = secrets.token_hex(16), _free_port()
    env = _clean_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--num-cpus", "1", "--temp-dir", temp_dir, "--include-dashboard", "false",
           "--dashboard-port", str(_free_port()), "--ray-client-server-port", str(_free_port()),
           "--dashboard-agent-listen-port", str(_free_port()), "--object-store-memory", str(100 * 1024 * 1024),
           "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(Path(temp_dir).glob("session_latest/logs/raylet.out")) and time.monotonic() < deadline:
            assert head.poll() is None, f"ray start --head exited with {head.returncode}"
            time.sleep(1)
        time.sleep(3)
        yield {"address": f"127.0.0.1:{port}", "token": token, "temp_dir": temp_dir}
    finally:
        _stop_tree(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _lam_eval(tmp_path: Path, env: dict, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float, int]:
    cmd = [sys.executable, "-m", "cluster.cli", "eval", "--policy", "expert", "--episodes", "1", "--workers", "1",
           "--levels", "BabyAI-GoToLocal-v0", "--no-html", "--json", "--out", str(tmp_path / "eval")]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_tree(p)
        pytest.fail(f"lam eval with RAY_ADDRESS={env.get('RAY_ADDRESS')} still running after {timeout:.0f}s")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err), time.monotonic() - t0, p.pid


# issue 21 item 6
@pytest.mark.timeout(240)
def test_lam_eval_joins_a_running_local_cluster(ray_head, tmp_path):
    """`RAY_ADDRESS=127.0.0.1:PORT lam eval` runs on that cluster (its token found the way Ray finds it
    for a local cluster), instead of dialling the machine's external address until killed."""
    env = _clean_env(RAY_ADDRESS=ray_head["address"], RAY_AUTH_TOKEN=ray_head["token"])
    p, took, pid = _lam_eval(tmp_path, env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout[p.stdout.index("{"):])["policies"]["expert"]["overall"]["episodes"] == 1
    # the driver ran inside the head's session, not in a private cluster of its own
    assert list(Path(ray_head["temp_dir"]).glob(f"session_latest/logs/python-core-driver-*_{pid}.log")), \
        "the eval driver did not join the head's cluster"


# issue 21 item 6
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["dead address", "no token", "token mode without a token", "wrong token"])
def test_joining_fails_in_seconds_with_the_reason(ray_head, tmp_path, case):
    if case == "dead address":
        env, words = _clean_env(RAY_ADDRESS=f"127.0.0.1:{_free_port()}"), "no Ray cluster answers"
    elif case == "no token":  # a home without ~/.ray/auth_token, no RAY_AUTH_TOKEN
        env, words = _clean_env(RAY_ADDRESS=ray_head["address"], HOME=str(tmp_path)), "token"
    elif case == "token mode without a token":
        env, words = _clean_env(RAY_ADDRESS=ray_head["address"], HOME=str(tmp_path), RAY_AUTH_MODE="token"), "token"
    else:
        env, words = _clean_env(RAY_ADDRESS=ray_head["address"], RAY_AUTH_TOKEN="0" * 32), "token"
    p, took, _ = _lam_eval(tmp_path, env, timeout=90)
    assert p.returncode != 0
    assert took < 30, f"took {took:.0f}s to fail"
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("lam eval: error:")]
    assert len(errors) == 1 and env["RAY_ADDRESS"] in errors[0] and words in errors[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
