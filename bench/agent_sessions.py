"""Agent API sessions: in-process vs on Ray actors, and a load of 200 concurrent sessions.

    python bench/agent_sessions.py                          # N=2 actors, 200-session load, < 3 min
    python bench/agent_sessions.py --workers 4 --per-worker 6 --load 200 --level BabyAI-BossLevel-v0

Phase 1, the same run: two real servers on 127.0.0.1, `python -m agent.api` (sessions in the API
process's threads) and `python -m data_collection.session_fleet --workers N` (sessions in N Ray
actors, a local Ray this server starts and stops). Each gets the same N x per-worker expert sessions
(BabyAI, one level, distinct seeds) at once; agent steps/s = steps of all sessions / wall time from the
first create to the last session finished. Prints both and their ratio.
Phase 2: `--load` sessions created idle by 32 client threads at once against the in-process server
(--max-live above the load), all live together (checked), then all run (POST /run) and polled to the
end: every HTTP status seen (no 5xx allowed), every session accounted for and finished, and the
server's peak RSS (VmHWM from /proc) at start and at the end.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def _server(module: str, db: Path, *args: str):
    from serving.launch import ServerProcess, find_free_port, popen_logged

    port = find_free_port()
    proc, log = popen_logged([sys.executable, "-m", module, "--port", str(port), "--db", str(db), *args],
                             prefix="lam-bench-sessions-")
    return ServerProcess(proc, "127.0.0.1", port, log, "agent-api").wait_healthy(300)


def _peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _drive(url: str, bodies: list[dict], clients: int, timeout_s: float, hold: bool = False) -> dict:
    """Create every session at once (from `clients` threads), poll until none is live; statuses and steps.
    hold: create them idle, check that all are live at once, then start them all (POST /run)."""
    import httpx

    codes: Counter = Counter()
    t0 = time.perf_counter()

    def post(path, body=None):
        with httpx.Client(base_url=url, timeout=120) as c:
            r = c.post(path, json=body)
            codes[r.status_code] += 1
            return r.json().get("id")

    held = None
    with ThreadPoolExecutor(clients) as pool:
        ids = list(pool.map(lambda b: post("/v1/sessions", {**b, "run": not hold}), bodies))
        if hold:
            held = httpx.get(url + "/health", timeout=60).json()["live_sessions"]
            list(pool.map(lambda i: post(f"/v1/sessions/{i}/run"), [i for i in ids if i]))
    with httpx.Client(base_url=url, timeout=120) as c:
        while True:
            r = c.get("/v1/sessions")
            codes[r.status_code] += 1
            rows = {s["id"]: s for s in r.json()["sessions"]}
            if all(rows.get(i, {}).get("status") not in ("idle", "running") for i in ids if i):
                break
            if time.perf_counter() - t0 > timeout_s:
                break
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    mine = [rows.get(i) for i in ids]
    return {"wall_s": wall, "codes": dict(codes), "created": sum(i is not None for i in ids), "held": held,
            "found": sum(r is not None for r in mine), "statuses": dict(Counter(r["status"] for r in mine if r)),
            "steps": sum(r["steps"] for r in mine if r), "success": sum(bool(r["success"]) for r in mine if r)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="Ray actors of the fleet server (0: skip phase 1)")
    p.add_argument("--per-worker", type=int, default=8, help="concurrent sessions per actor in phase 1")
    p.add_argument("--level", default="BabyAI-GoToObjMaze-v0", help="BabyAI level of every session")
    p.add_argument("--load", type=int, default=200, help="concurrent sessions in phase 2 (0: skip)")
    p.add_argument("--timeout", type=float, default=150.0, help="seconds per phase before giving up")
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lam-bench-sessions-"))
    n = a.workers * a.per_worker
    bodies = [{"env": "babyai", "level": a.level, "seed": 100 + i} for i in range(n)]
    results = {}
    for name, module, args in [] if not a.workers else [("in-process", "agent.api", ()),
                               (f"ray x{a.workers}", "data_collection.session_fleet", ("--workers", str(a.workers)))]:
        server = _server(module, tmp / f"{name.split()[0]}.db", "--max-live", str(max(n, 64)), *args)
        try:
            results[name] = r = _drive(server.root_url, bodies, n, a.timeout)
        finally:
            server.stop()
        print(f"{name:>11}: {n} sessions, {r['steps']} agent steps in {r['wall_s']:.1f}s = "
              f"{r['steps'] / r['wall_s']:.1f} steps/s; {r['statuses']}; success {r['success']}/{n}", flush=True)
    if results:
        base, ray_ = results["in-process"], results[f"ray x{a.workers}"]
        print(f"ratio ray/in-process: {(ray_['steps'] / ray_['wall_s']) / (base['steps'] / base['wall_s']):.2f}x "
              f"(same sessions, same steps: {ray_['steps'] == base['steps']})")
    if a.load:
        server = _server("agent.api", tmp / "load.db", "--max-live", str(a.load + 8))
        try:
            idle_rss = _peak_rss_mb(server.pid)
            load = [{"env": "babyai", "seed": 1000 + i} for i in range(a.load)]
            r = _drive(server.root_url, load, 32, a.timeout, hold=True)
            peak = _peak_rss_mb(server.pid)
        finally:
            server.stop()
        fives = sum(v for k, v in r["codes"].items() if k >= 500)
        lost = a.load - r["found"]
        print(f"load: {a.load} sessions, {r['held']} live at once, all done in {r['wall_s']:.1f}s; HTTP {r['codes']}; "
              f"5xx: {fives}; "
              f"lost sessions: {lost}; {r['statuses']}; {r['steps']} steps; server peak RSS {peak:.0f} MB "
              f"(at start {idle_rss:.0f} MB)")
        if fives or lost or r["statuses"].get("finished", 0) != a.load:
            sys.exit("load bar missed: a 5xx, a lost session, or a session that did not finish")


if __name__ == "__main__":
    main()
