"""Cost grows linearly with the work: N and 10 N expert episodes (BabyAI GoToLocal, the cheapest world
that runs the real episode runner) through the one rollout fleet as an evaluation, with its metrics
and report, each in a fresh driver process. Prints the wall-time ratio (target <= 11x) and the
ratio of the driver's peak RSS (target <= 1.5x: results stream to one shard per chunk and the
metrics are computed shard by shard, so nothing holds every episode in memory).

    python bench/fleet_scale.py                  # 10,000 vs 100,000 episodes (long: an idle machine)
    python bench/fleet_scale.py --quick          # 500 vs 5,000 (tests/eval/test_fleet_scale.py, slow)
    python bench/fleet_scale.py --sizes 2000,20000 --workers 4 --out runs/bench-fleet-scale.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
LEVEL = "BabyAI-GoToLocal-v0"
TARGET_WALL, TARGET_RSS = 11.0, 1.5


def run_one(n: int, workers: int, out: Path) -> dict:
    """One evaluation of n expert episodes into out; what the driver measured (in this process)."""
    from envs.registry import sample_tasks
    from eval.evaluator import evaluate
    from eval.report import write_report
    from eval.suites import chunk_size

    t0 = time.perf_counter()
    tasks = sample_tasks("babyai", [LEVEL], "test", n)
    res = evaluate("expert", "babyai", tasks, {"kind": "expert"}, {"max_steps": 64}, workers, out,
                   chunk=chunk_size(n, "expert"), progress=False)
    write_report(out, {"expert": res}, {"eval": res["wall_s"]}, {})
    m = res["overall"]
    return {"episodes": n, "wall_s": round(time.perf_counter() - t0, 2), "eval_wall_s": round(res["wall_s"], 2),
            "success_rate": m["success_rate"], "episodes_total": m["episodes_total"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="two episode counts, small then large")
    p.add_argument("--quick", action="store_true", help="500 vs 5,000 episodes")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", default=None, help="also write the JSON summary here")
    p.add_argument("--run", type=int, default=None, help=argparse.SUPPRESS)  # one size, in this process
    p.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.run is not None:
        print(json.dumps(run_one(a.run, a.workers, Path(a.dir))))
        return None
    sizes = [500, 5000] if a.quick else [int(x) for x in a.sizes.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="lam-bench-fleet-scale-") as tmp:
        for n in sizes:  # a fresh driver per size: its peak RSS is that run's alone
            cmd = [sys.executable, str(Path(__file__).resolve()), "--run", str(n), "--workers", str(a.workers),
                   "--dir", str(Path(tmp) / f"eval-{n}")]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"{n} episodes failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            print(f"{n:>7} episodes: {r['wall_s']:8.1f} s wall ({n / r['eval_wall_s']:.0f} episodes/s in the fleet), "
                  f"driver peak RSS {r['peak_rss_mb']:.0f} MB, success {100 * r['success_rate']:.1f}%", flush=True)
    small, large = runs
    wall, rss = large["wall_s"] / small["wall_s"], large["peak_rss_mb"] / small["peak_rss_mb"]
    work = large["episodes"] / small["episodes"]
    summary = {"runs": runs, "work_ratio": work, "wall_ratio": round(wall, 2), "rss_ratio": round(rss, 3),
               "wall_target": TARGET_WALL * work / 10, "rss_target": TARGET_RSS, "workers": a.workers}
    summary["ok"] = wall <= summary["wall_target"] and rss <= TARGET_RSS
    print(f"{work:.0f}x the episodes: {wall:.2f}x the wall time (target <= {summary['wall_target']:.0f}x), "
          f"{rss:.2f}x the driver's peak RSS (target <= {TARGET_RSS}x): {'OK' if summary['ok'] else 'MISSED'}")
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
