"""Collection throughput: W Ray collector actors against the same bot loop in one plain process.

    python bench/collect.py                                  # 2 rounds of 3,000 GoToLocal episodes each way
    python bench/collect.py --episodes 3000 --rounds 3 --workers 2 --big 20000 --record bench/RESULTS.md

Both runs go through `data_collection.collector.collect` with the same config and code path (episode
runner, BabyAI bot, renderer, record building, Parquet shards, manifest): `--workers 0` runs the
batches in this process, `--workers W` on W Ray actors. Ray is started before the clock starts (its
start-up is printed on its own); actor start-up is inside the Ray run. Printed:

- episodes/s and steps/s of each run, and the speedup of W actors over the plain process;
- Ray's overhead per step, three ways: wall time per step per worker in the Ray run minus wall
  time per step in the plain process (scheduling, serialization, actor start-up, driver work, idle
  slots); CPU time per step of every process of the Ray run (driver, actors including their
  start-up, Ray's own GCS/raylet/agents) minus the plain process's; and the round trip of one
  empty actor call, spread over the steps of one batch;
- CPU-normalised figures (episodes per CPU-second of the processes that ran episodes), which do not
  move with what else the machine is running, and the cores each run actually got (CPU-s / wall-s):
  on a shared Linux box with autogroup scheduling, all processes of one session (the driver, Ray
  and its actors) share one session's slice, so under load W actors cannot get more than one
  plain process did, and wall-clock speedups mean nothing there;
- with --big N: one N-episode collection timed from `lam collect`'s point of view (Ray start included).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def _run(episodes: int, workers: int, level: str, out: Path, shard: int) -> dict:
    from data_collection.collector import CollectConfig, collect

    c0 = time.process_time()
    stats = collect(CollectConfig(levels=[level], episodes=episodes, workers=workers, out=str(out),
                                  shard_episodes=shard), progress=False)
    stats["driver_cpu_s"] = time.process_time() - c0
    return stats


def _ray_system_cpu() -> float:
    """CPU seconds used so far by the live Ray processes this process started (GCS, raylet,
    agents, idle workers). Not their reaped children: exited actors report their own CPU."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if "RolloutActor" in " ".join(child.cmdline()):  # actors report their own CPU
                continue
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _call_round_trip_s(calls: int = 50) -> float:
    import ray

    from functools import partial

    from data_collection.batch import collect_batch
    from data_collection.fleet import RolloutActor

    actor = ray.remote(num_cpus=1)(RolloutActor).remote("babyai", {"max_steps": 64})
    work = partial(collect_batch, policy={"kind": "expert"}, provenance={"model": "", "code_version": ""})
    ray.get(actor.run.remote(work, []))
    t0 = time.perf_counter()
    for _ in range(calls):
        ray.get(actor.run.remote(work, []))
    dt = (time.perf_counter() - t0) / calls
    ray.kill(actor)
    return dt


def _machine() -> str:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node()}: {os.cpu_count()} cores ({model or platform.processor()}), Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=3000, help="per run (plain and Ray)")
    p.add_argument("--rounds", type=int, default=2, help="plain/Ray pairs, alternated (the load on a shared box moves)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--level", default="BabyAI-GoToLocal-v0")
    p.add_argument("--shard-episodes", type=int, default=500)
    p.add_argument("--big", type=int, default=0, help="also time one collection of this many episodes")
    p.add_argument("--record", default=None, help="append the result as markdown to this file")
    p.add_argument("--keep", action="store_true", help="keep the collected datasets (printed path)")
    a = p.parse_args(argv)

    from data_collection.ray_local import init_ray

    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="lam-bench-collect-"))
    t0 = time.perf_counter()
    init_ray()
    ray_start = time.perf_counter() - t0
    rounds = []
    for r in range(a.rounds):
        plain = _run(a.episodes, 0, a.level, tmp / f"plain{r}", a.shard_episodes)
        sys0 = _ray_system_cpu()
        ray = _run(a.episodes, a.workers, a.level, tmp / f"ray{r}", a.shard_episodes)
        ray["system_cpu_s"] = _ray_system_cpu() - sys0
        rounds.append((plain, ray, os.getloadavg()[0]))
    round_trip = _call_round_trip_s()
    big = None
    if a.big:
        import ray as ray_mod

        ray_mod.shutdown()  # the big run starts its own Ray, as `lam collect` does
        t0 = time.perf_counter()
        big = _run(a.big, a.workers, a.level, tmp / "big", a.shard_episodes)
        big["total_s"] = time.perf_counter() - t0
    load1 = os.getloadavg()

    lines = [
        f"## bench/collect.py, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"`python bench/collect.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace("  ", " "),
        f"machine: {_machine()}; load average {load0[0]:.1f} before, {load1[0]:.1f} after "
        "(above 2, other jobs share the two cores)",
        "",
        "| run | episodes | steps | wall s | episodes/s | µs/step/worker | cores used | speedup | once actors are up | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    speedups, overheads, cpu_over = [], [], []
    for r, (plain, ray, load) in enumerate(rounds):
        plain_us = 1e6 * plain["wall_s"] / plain["steps"]
        ray_us = 1e6 * ray["wall_s"] * a.workers / ray["steps"]
        speedup = ray["episodes_per_s"] / plain["episodes_per_s"]
        steady = ray["episodes"] / (ray["wall_s"] - ray["actors_ready_s"]) / plain["episodes_per_s"]
        ray_cpu = ray["driver_cpu_s"] + ray["actor_process_cpu_s"] + ray["system_cpu_s"]
        speedups.append(speedup)
        overheads.append(ray_us - plain_us)
        cpu_over.append((1e6 * (ray_cpu - plain["driver_cpu_s"]) / ray["steps"], ray, plain))
        lines += [
            f"| {r + 1}: plain process | {plain['episodes']} | {plain['steps']} | {plain['wall_s']:.1f} | "
            f"{plain['episodes_per_s']:.0f} | {plain_us:.0f} | {plain['driver_cpu_s'] / plain['wall_s']:.2f} | | | |",
            f"| {r + 1}: {a.workers} Ray actors | {ray['episodes']} | {ray['steps']} | {ray['wall_s']:.1f} | "
            f"{ray['episodes_per_s']:.0f} | {ray_us:.0f} | {ray_cpu / ray['wall_s']:.2f} | **{speedup:.2f}x** | "
            f"{steady:.2f}x | {load:.1f} |",
        ]
    median = sorted(speedups)[len(speedups) // 2]
    cpu_us, ray, plain = sorted(cpu_over, key=lambda x: x[0])[len(cpu_over) // 2]
    steps_per_batch = ray["steps"] / max(1, ray["batches"])
    plain_cpu_eps = plain["episodes"] / plain["driver_cpu_s"]  # the plain process does everything itself
    actor_cpu_eps = ray["episodes"] / max(ray["actor_cpu_s"], 1e-9)
    lines += [
        "",
        f"- speedup of {a.workers} Ray actors over the plain process (median of {len(rounds)} alternated rounds, "
        f"actor start-up included, Ray start-up of {ray_start:.1f} s not): **{median:.2f}x**",
        f"- Ray's overhead per step (wall): {sorted(overheads)[len(overheads) // 2]:+.0f} µs per step per worker, "
        "median (scheduling, serialization, actor start-up, driver, idle slots, and whatever the load did)",
        f"- Ray's overhead per step (CPU): {cpu_us:+.0f} µs per step, median round (Ray run: driver "
        f"{ray['driver_cpu_s']:.1f} CPU-s, actors {ray['actor_process_cpu_s']:.1f} incl. start-up, Ray's own "
        f"processes {ray['system_cpu_s']:.1f}; plain process {plain['driver_cpu_s']:.1f})",
        f"- one actor call round trip: {1e3 * round_trip:.1f} ms, i.e. {1e6 * round_trip / steps_per_batch:.1f} µs "
        f"per step at {steps_per_batch:.0f} steps per batch",
        f"- CPU-normalised: plain {plain_cpu_eps:.0f} episodes per CPU-s; actors {actor_cpu_eps:.0f} episodes per "
        f"CPU-s inside their batches, driver {ray['driver_cpu_s']:.1f} CPU-s for {ray['episodes']} episodes; on "
        f"{a.workers} free cores that is about {a.workers * actor_cpu_eps:.0f} episodes/s",
    ]
    if big:
        ok = "under" if big["total_s"] < 120 else "OVER"
        lines.append(f"- {big['kept']} {a.level} episodes with {a.workers} workers: **{big['total_s']:.0f} s** "
                     f"including Ray start ({ok} the 2-minute bar); {big['episodes_per_s']:.0f} episodes/s, "
                     f"actors {big['episodes'] / max(big['actor_cpu_s'], 1e-9):.0f} episodes per CPU-s, "
                     f"{big['actor_restarts']} actor restarts, load average {load1[0]:.1f} at the end")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.keep:
        print(f"datasets kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.record:
        with open(a.record, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
