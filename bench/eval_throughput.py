"""Evaluation throughput: episodes/s of the Ray evaluation actors vs the same loop in one plain process.

    python bench/eval_throughput.py --episodes 10000 --workers 2                 # BabyAI bot (expert)
    python bench/eval_throughput.py --episodes 200 --workers 8 --policy model \
        --model-url http://127.0.0.1:8000/v1 --model lam-action-model          # a served model

Both sides run the same held-out tasks with the same policy and write the same Parquet shards:
the Ray side through eval.evaluator.evaluate (actors, chunks, manifest, sidecars), the plain side
as a for-loop over run_episode in this process (on the first --plain-episodes tasks). Prints one
JSON line; the Ray wall time includes starting Ray and the actors.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def plain_loop(env_name: str, tasks, policy_spec: dict, runner: dict, out: Path, chunk: int) -> dict:
    from agent.episode import RunnerConfig, episode_id, run_episode
    from agent.policy_factory import build_policy
    from data_collection.schema import episode_rows
    from data_collection.store import TrajectoryStore
    from envs.registry import make_env

    env, policy, cfg = make_env(env_name), build_policy(policy_spec), RunnerConfig(**runner)
    store = TrajectoryStore(out)
    t0 = time.perf_counter()
    ok, rows = 0, []
    for i, t in enumerate(tasks):
        ep = run_episode(env, policy, t, cfg, episode_id=episode_id(t, "plain", 0))
        ok += ep.success
        rows += episode_rows(ep)
        if (i + 1) % chunk == 0 or i + 1 == len(tasks):
            store.write_shard("episodes", f"chunk-{i // chunk:05d}", rows)
            rows = []
    wall = time.perf_counter() - t0
    n = len(tasks)
    return {"episodes": n, "wall_s": wall, "episodes_per_s": n / wall, "success_rate": ok / n}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=10_000)
    p.add_argument("--plain-episodes", type=int, default=2000, help="episodes for the one-process loop (0: skip)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--levels", default="BabyAI-GoToLocal-v0")
    p.add_argument("--policy", default="expert", choices=["expert", "random", "model"])
    p.add_argument("--model-url", default=None)
    p.add_argument("--model", default="lam-action-model")
    p.add_argument("--max-steps", type=int, default=64)
    p.add_argument("--out", default=None, help="write the JSON line here too (appends)")
    a = p.parse_args(argv)

    from envs.registry import sample_tasks
    from eval.evaluator import evaluate
    from eval.suites import chunk_size

    levels = a.levels.split(",")
    tasks = sample_tasks("babyai", levels, "test", a.episodes)
    policy = {"kind": a.policy}
    if a.policy == "model":
        if not a.model_url:
            p.error("--policy model needs --model-url")
        policy.update(base_url=a.model_url, model=a.model)
    runner = {"max_steps": a.max_steps, "time_limit_s": 30.0}
    chunk = chunk_size(len(tasks), a.policy)
    with tempfile.TemporaryDirectory(prefix="lam-eval-bench-") as tmp:
        t0 = time.perf_counter()
        res = evaluate("bench", "babyai", tasks, policy, runner, a.workers, tmp, chunk=chunk, progress=False)
        ray_wall = time.perf_counter() - t0
        plain = plain_loop("babyai", tasks[: a.plain_episodes], policy, runner, Path(tmp) / "plain", chunk) \
            if a.plain_episodes else None
    m = res["overall"]
    out = {
        "bench": "eval_throughput", "policy": a.policy, "levels": levels, "episodes": len(tasks),
        "workers": a.workers, "chunk": chunk,
        "ray_wall_s": round(ray_wall, 1), "ray_episodes_per_s": round(len(tasks) / ray_wall, 1),
        "ray_episodes_per_s_excl_startup": round(len(tasks) / res["wall_s"], 1),
        "success_rate": m["success_rate"], "false_success": m["false_success"], "infra_errors": m["infra_errors"],
        "plain_episodes": plain and plain["episodes"],
        "plain_episodes_per_s": plain and round(plain["episodes_per_s"], 1),
        "speedup": plain and round(len(tasks) / ray_wall / plain["episodes_per_s"], 2),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f} at end",
        "date": datetime.date.today().isoformat(),
    }
    line = json.dumps(out)
    print(line)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    return out


if __name__ == "__main__":
    main()
