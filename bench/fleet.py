"""Fleet throughput: N agent workers (Ray actors) sharing one model endpoint, for N = 1, 2, 4, 8, 16.

    python bench/fleet.py                                   # tiny random model built on the fly
    python bench/fleet.py --model runs/quickstart/train/export --workers 1,2,4,8,16 --seconds 20

One embedded-backend server (serving.launch.start_server_subprocess, continuous batching) serves
every phase; the 16 actors (the one rollout fleet, data_collection/fleet.py, running the episode runner with
ModelPolicy on BabyAI) start once and the first N take part in phase N. Each phase warms up, then
counts agent steps finished inside a fixed wall-clock window. An agent step is one environment
decision including its grounding retries (a random model's output is mostly invalid, so most
steps take 1 + max_retries requests). Throughput should grow with N until the server saturates.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
LEVEL = "BabyAI-GoToLocal-v0"


def build_model(out_dir: Path) -> str:
    """The serving tests' tiny random Llama (hidden 64, 2 layers), with room for BabyAI prompts."""
    sys.path.insert(0, str(ROOT / "tests" / "serving"))
    from serving_tiny_model import build_tiny_model

    return str(build_tiny_model(out_dir, max_position_embeddings=4096))


class _Clocked:
    """Wraps a policy: logs the wall-clock end of every request with its (episode, step), and ends
    the episode (a PolicyError the window expects) once the window has closed."""

    def __init__(self, inner, t_off: float):
        self.inner, self.name, self.t_off, self.episode, self.log = inner, inner.name, t_off, -1, []

    def begin(self, env, task):
        self.episode += 1
        self.inner.begin(env, task)

    def act(self, messages, env, step, attempt):
        from agent.policies import PolicyError

        if time.time() >= self.t_off:
            raise PolicyError("window closed")
        out = self.inner.act(messages, env, step, attempt)
        self.log.append((time.time(), (self.episode, step)))
        return out


def run_window(actor, chunk: tuple, attempt: int = 0) -> dict:
    """Work for the rollout fleet: episodes back to back until t_off; steps (and requests) finished in [t_on, t_off)."""
    from agent.episode import run_episode
    from agent.policy_factory import build_policy
    from envs.base import Task
    from envs.registry import TEST_SEEDS

    index, t_on, t_off, spec = chunk
    policy, errors, k = _Clocked(actor.cached("policy", lambda: build_policy(spec)), t_off), [], 0
    while time.time() < t_off:
        task = Task("babyai", LEVEL, TEST_SEEDS[0] + 10_000 * index + k, split="test")
        ep = run_episode(actor.env, policy, task, actor.runner)
        if ep.error and ep.error != "window closed":
            errors.append(ep.error)  # counted and shown; the worker goes on with the next task
        k += 1
    last = {}  # a step is done when its last request is answered
    for t, key in policy.log:
        last[key] = t
    steps = sum(t_on <= t < t_off for t in last.values())
    requests = sum(t_on <= t < t_off for t, _ in policy.log)
    return {"steps": steps, "episodes": k, "requests": requests, "errors": errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model dir (default: build the tiny random test model)")
    p.add_argument("--workers", default="1,2,4,8,16", help="fleet sizes, one phase each")
    p.add_argument("--seconds", type=float, default=15.0, help="measured window per phase")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds each phase runs before its window opens")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model server")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=16, help="ModelPolicy max_tokens (BabyAI actions are short)")
    p.add_argument("--max-retries", type=int, default=2)
    p.add_argument("--history-window", type=int, default=2,
                   help="steps of history per prompt (the test model's byte-level tokenizer makes long prompts)")
    p.add_argument("--out", default=None, help="also write the JSON summary here")
    a = p.parse_args()
    sizes = [int(n) for n in a.workers.split(",")]

    import ray

    from data_collection.ray_local import init_ray
    from serving.launch import start_server_subprocess

    tmp = tempfile.TemporaryDirectory(prefix="lam-bench-fleet-")
    t0 = time.perf_counter()
    model_dir = a.model or build_model(Path(tmp.name) / "tiny")
    server = start_server_subprocess(model_dir, threads=a.threads, max_batch_size=a.max_batch_size, timeout=600,
                                     max_new_tokens_limit=max(a.max_tokens, 16),
                                     extra_args=["--log-level", "warning"])
    print(f"model server {server.base_url} ({model_dir}) up after {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    started = init_ray()
    summary = {"model": model_dir, "level": LEVEL, "seconds": a.seconds, "server_threads": a.threads,
               "history_window": a.history_window,
               "max_batch_size": a.max_batch_size, "max_tokens": a.max_tokens, "max_retries": a.max_retries,
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f} at start",
               "phases": []}
    try:
        from data_collection.fleet import Fleet

        policy = {"kind": "model", "base_url": server.base_url, "model": server.model_name,
                  "max_tokens": a.max_tokens, "timeout_s": 600, "retries": 0}
        runner = {"max_steps": 64, "max_retries": a.max_retries, "history_window": a.history_window}
        t0 = time.perf_counter()
        # Agents mostly wait on the server: no CPU reservation, or 2 cores would cap the fleet at 2.
        fleet = Fleet(max(sizes), "babyai", runner, cpus=0, depth=1, ray_restarts=0)
        print(f"{len(fleet.actors)} agent actors up after {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        print(f"{'workers':>7} {'steps/s':>8} {'requests/s':>10} {'episodes':>8} {'speedup':>7}")
        base = None
        for n in sizes:
            t_on = time.time() + a.warmup
            t_off = t_on + a.seconds
            for i in range(n):  # one window each on actors 0..n-1 (the fleet gives each to the least loaded)
                fleet.submit(run_window, (i, t_on, t_off, policy))
            parts = []
            while len(parts) < n:
                parts += [r for _, r in fleet.wait(timeout=None)]
            steps = sum(x["steps"] for x in parts)
            rate = steps / a.seconds
            base = base or rate
            row = {"workers": n, "agent_steps_per_s": round(rate, 2), "agent_steps": steps,
                   "requests_per_s": round(sum(x["requests"] for x in parts) / a.seconds, 1),
                   "episodes": sum(x["episodes"] for x in parts), "speedup_vs_1": round(rate / base, 2) if base else None,
                   "n_errors": sum(len(x["errors"]) for x in parts), "errors": [e for x in parts for e in x["errors"]][:2]}
            summary["phases"].append(row)
            print(f"{n:>7} {rate:>8.2f} {row['requests_per_s']:>10.1f} {row['episodes']:>8} "
                  f"{row['speedup_vs_1']:>6.2f}x" + (f"  {row['n_errors']} errors, e.g. {row['errors'][0]}" if row["errors"] else ""),
                  flush=True)
        fleet.close()
    finally:
        if started:
            ray.shutdown()
        server.stop()
    summary["load_at_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(summary, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
