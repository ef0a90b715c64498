"""The pipeline driver: collect → train → serve → evaluate, each stage resumable.

    lam pipeline --config configs/quickstart.yaml

Re-running with the same run_dir skips finished stages (a stage is finished when its marker is
in run_dir/stages.json) and resumes unfinished ones from what they left on disk.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console

from cluster.config import PipelineConfig, ensure_writable

console = Console()


class _Stages:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "stages.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def done(self, name: str) -> dict | None:
        return self.data.get(name)

    def mark(self, name: str, info: dict) -> None:
        self.data[name] = info
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def run_pipeline(cfg: PipelineConfig) -> dict:
    from data_collection.collector import CollectConfig, collect
    from envs.registry import sample_tasks
    from eval.evaluator import evaluate
    from eval.report import print_report, write_report
    from serving.launch import start_server_subprocess
    from training.train import train

    run_dir = ensure_writable(cfg.run_dir)
    if cfg.ray.address:  # every stage's init_ray() joins this cluster instead of starting one
        os.environ["RAY_ADDRESS"] = cfg.ray.address
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=1))
    stages = _Stages(run_dir)
    wall: dict[str, float] = {}

    # 1. collect ------------------------------------------------------------------------
    data_dir = run_dir / "data"
    info = stages.done("collect")
    if info is None:
        t0 = time.perf_counter()
        c = cfg.collect
        stats = collect(
            CollectConfig(env=c.env, levels=c.levels, episodes=c.episodes, workers=c.workers, out=str(data_dir),
                          shard_episodes=c.shard_episodes, max_steps=c.max_steps, time_limit_s=c.time_limit_s,
                          base_seed=c.base_seed),
            resume=data_dir.exists(),
        )
        info = {**stats, "wall_s": time.perf_counter() - t0}
        stages.mark("collect", info)
    wall["collect"] = info["wall_s"]
    console.print(f"[bold]collect[/]: {info['kept']} verified episodes kept of {info['episodes']} "
                  f"({info['failures']} failures, {info['dropped_time_limit']} over time limit, "
                  f"{info['duplicates']} duplicates) in {info['wall_s']:.0f}s")

    # 2. train --------------------------------------------------------------------------
    train_dir = run_dir / "train"
    info = stages.done("train")
    if info is None:
        t0 = time.perf_counter()
        summary = train(str(data_dir), str(train_dir), cfg.train, resume=True)
        info = {**summary, "wall_s": time.perf_counter() - t0}
        stages.mark("train", info)
    wall["train"] = info["wall_s"]
    export = info["export"]
    console.print(f"[bold]train[/]: {info['steps']} steps, {info['params'] / 1e6:.1f}M params, final loss "
                  f"{info['final_loss']:.3f}, eval loss {info['eval_loss']:.3f} in {info['wall_s']:.0f}s → {export}")

    # 3. serve + 4. evaluate ------------------------------------------------------------
    e = cfg.eval
    tasks = sample_tasks(cfg.collect.env, e.levels, "test", e.episodes * len(e.levels), base_seed=e.base_seed)
    runner = {"max_steps": e.max_steps, "max_retries": e.max_retries, "history_window": cfg.train.history_window,
              "time_limit_s": 120.0}
    results: dict[str, dict] = {}
    eval_dir = run_dir / "eval"
    t0 = time.perf_counter()
    server = start_server_subprocess(export, threads=cfg.serve.threads, max_batch_size=cfg.serve.max_batch_size,
                                     backend=cfg.serve.backend, port=cfg.serve.port, model_name="lam-action-model")
    wall["serve_start"] = time.perf_counter() - t0
    console.print(f"[bold]serve[/]: {server.base_url} (pid {server.pid}) ready in {wall['serve_start']:.0f}s")
    try:
        t0 = time.perf_counter()
        policy = {"kind": "model", "base_url": server.base_url, "model": "lam-action-model",
                  "temperature": e.temperature, "seed": cfg.seed}
        results["model"] = evaluate("model", cfg.collect.env, tasks, policy, runner, e.workers, eval_dir)
        wall["eval_model"] = time.perf_counter() - t0
    finally:
        server.stop()
    for name in e.baselines:
        t0 = time.perf_counter()
        results[name] = evaluate(name, cfg.collect.env, tasks, {"kind": name, "seed": cfg.seed}, runner,
                                 cfg.collect.workers, eval_dir)
        wall[f"eval_{name}"] = time.perf_counter() - t0
    m = results["model"]["overall"]
    console.print(f"[bold]evaluate[/]: model success {100 * m['success_rate']:.1f}% on {m['episodes']} held-out episodes")
    report = write_report(run_dir, results, wall, {"export": export})
    print_report(report)
    return report
