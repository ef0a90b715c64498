"""The pipeline driver: collect → train (imitation [→ self-boost → DPO]) → serve → evaluate.

    lam pipeline --config configs/quickstart.yaml
    lam pipeline --config configs/recipe.yaml        # all three LAM training phases

Re-running with the same run_dir skips finished stages (markers in run_dir/stages.json) and
resumes unfinished ones from what they left on disk. Held-out success is measured after every
training phase, so the report shows what each phase changed.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console

from cluster.config import PipelineConfig, ensure_writable

console = Console()
SERVED_NAME = "lam-action-model"


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


def _stage(stages: _Stages, name: str, fn) -> dict:
    info = stages.done(name)
    if info is None:
        t0 = time.perf_counter()
        info = {**fn(), "wall_s": time.perf_counter() - t0}
        stages.mark(name, info)
    return info


def _with_server(cfg: PipelineConfig, export: str, fn):
    from serving.launch import start_server_subprocess

    server = start_server_subprocess(export, threads=cfg.serve.threads, max_batch_size=cfg.serve.max_batch_size,
                                     backend=cfg.serve.backend, port=cfg.serve.port, model_name=SERVED_NAME,
                                     extra_args=["--prefill-thread", cfg.serve.prefill_thread,
                                                 "--packed-prefill", cfg.serve.packed_prefill,
                                                 "--replicas", str(cfg.serve.replicas)])
    console.print(f"[bold]serve[/]: {export} at {server.base_url} (pid {server.pid})")
    try:
        return fn(server.base_url)
    finally:
        server.stop()


def _model_policy(base_url: str, temperature: float, seed: int) -> dict:
    return {"kind": "model", "base_url": base_url, "model": SERVED_NAME, "temperature": temperature, "seed": seed}


def run_pipeline(cfg: PipelineConfig) -> dict:
    from data_collection.collector import CollectConfig, collect
    from envs.registry import sample_tasks
    from eval.evaluator import evaluate
    from eval.metrics import effect
    from eval.report import print_report, write_report
    from training.train import train

    run_dir = ensure_writable(cfg.run_dir)
    if cfg.ray.address:  # every stage's init_ray() joins this cluster instead of starting one
        os.environ["RAY_ADDRESS"] = cfg.ray.address
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=1))
    stages = _Stages(run_dir)
    wall: dict[str, float] = {}
    e = cfg.eval
    runner = {"max_steps": e.max_steps, "max_retries": e.max_retries, "history_window": cfg.train.history_window,
              "time_limit_s": 120.0}
    tasks = sample_tasks(cfg.collect.env, e.levels, "test", e.episodes * len(e.levels), base_seed=e.base_seed)
    results: dict[str, dict] = {}
    phases: dict[str, dict] = {}

    # 1. collect ------------------------------------------------------------------------
    data_dir = run_dir / "data"
    c = cfg.collect
    info = _stage(stages, "collect", lambda: collect(
        CollectConfig(env=c.env, levels=c.levels, episodes=c.episodes, workers=c.workers, out=str(data_dir),
                      shard_episodes=c.shard_episodes, max_steps=c.max_steps, time_limit_s=c.time_limit_s,
                      base_seed=c.base_seed),
        resume=data_dir.exists(),
    ))
    wall["collect"] = info["wall_s"]
    console.print(f"[bold]collect[/]: {info.get('kept', '?')} verified episodes kept of {info.get('episodes', '?')} "
                  f"({info.get('failures', 0)} failures, {info.get('dropped_time_limit', 0)} over time limit, "
                  f"{info.get('duplicates', 0)} duplicates) in {info['wall_s']:.0f}s")

    def eval_phase(phase: str, export: str) -> None:
        key = f"eval_{phase}"
        name = f"model-{phase}" if len(cfg.phases) > 1 else "model"
        out = _stage(stages, key, lambda: _with_server(cfg, export, lambda url: evaluate(
            name, c.env, tasks, _model_policy(url, e.temperature, cfg.seed), runner, e.workers,
            run_dir / "eval")))
        wall[key] = out["wall_s"]
        results[name] = out
        m = out["overall"]
        phases[phase] = {"success_rate": m["success_rate"], "success_ci95": m["success_ci95"],
                         "successes": m["successes"], "episodes": m["episodes"], "export": export}
        change = ""
        if len(phases) > 1:  # what this phase changed, on the same held-out seeds, with its interval
            prev_name, prev = list(phases.items())[-2]
            eff = effect(prev, m)
            phases[phase]["change_vs_previous"] = {"previous": prev_name, "delta": eff["delta"], "ci95": eff["ci95"]}
            change = (f", {100 * eff['delta']:+.1f} pp vs {prev_name} "
                      f"[{100 * eff['ci95'][0]:+.1f}, {100 * eff['ci95'][1]:+.1f}]")
        console.print(f"[bold]evaluate[/] after {phase}: success {100 * m['success_rate']:.1f}% "
                      f"on {m['episodes']} held-out episodes{change} ({out['wall_s']:.0f}s)")

    # 2. imitation ------------------------------------------------------------------------
    train_dir = run_dir / "train"
    info = _stage(stages, "train", lambda: train(str(data_dir), str(train_dir), cfg.train,
                                                 resume=(train_dir / "checkpoints").exists()))
    wall["train"] = info["wall_s"]
    export = info["export"]
    console.print(f"[bold]train[/]: {info['steps']} steps, {info['params'] / 1e6:.1f}M params, final loss "
                  f"{info['final_loss']:.3f}, eval loss {info['eval_loss']:.3f} in {info['wall_s']:.0f}s → {export}")
    eval_phase("imitation", export)

    # 3. self-boosting: the model attempts fresh training tasks; verified successes join the data
    boost_dir = run_dir / "boost"
    if "self_boost" in cfg.phases:
        b = cfg.self_boost
        boost_tasks = sample_tasks(c.env, c.levels, "train", b.tasks, base_seed=b.base_seed)

        def attempts() -> dict:
            def run(url):
                for t in range(b.trials):
                    evaluate(f"trial{t}", c.env, boost_tasks, _model_policy(url, b.temperature, cfg.seed + 1000 + t),
                             runner, b.workers, boost_dir / "attempts")
            _with_server(cfg, export, run)
            return _split_attempts(boost_dir, b.trials)

        info = _stage(stages, "self_boost_attempts", attempts)
        wall["self_boost_attempts"] = info["wall_s"]
        console.print(f"[bold]self-boost[/]: {info['successes']} verified successes, {info['failures']} failures "
                      f"from {b.tasks} tasks × {b.trials} trials")
        boost_cfg = cfg.train.model_copy(update={"model": export, "epochs": b.epochs, "lr": b.lr, "warmup_steps": 10})
        info = _stage(stages, "self_boost_train", lambda: train([str(data_dir), str(boost_dir / "data")],
                                                                str(run_dir / "train_boost"), boost_cfg, resume=True))
        wall["self_boost_train"] = info["wall_s"]
        export = info["export"]
        eval_phase("self_boost", export)

    # 4. DPO on the model's own success/failure pairs -----------------------------------------
    if "dpo" in cfg.phases:
        from training.dpo import NoPairsError, train_dpo

        dpo_cfg = cfg.dpo.model_copy(update={"history_window": cfg.train.history_window})
        try:
            info = _stage(stages, "dpo_train", lambda: train_dpo([str(boost_dir / "data")], export,
                                                                 str(run_dir / "train_dpo"), dpo_cfg))
        except NoPairsError as err:
            # every attempted task succeeded every time, or failed every time: say so in the report and
            # keep the phases that ran (not marked done: a rerun with more self_boost trials retries it)
            phases["dpo"] = {"skipped": str(err)}
            console.print(f"[bold yellow]dpo skipped[/]: {err}")
        else:
            wall["dpo_train"] = info["wall_s"]
            export = info["export"]
            console.print(f"[bold]dpo[/]: {info['pairs']} pairs, reward accuracy {info['reward_accuracy']:.2f}")
            eval_phase("dpo", export)

    # baselines on the same held-out seeds ------------------------------------------------------
    for name in e.baselines:
        out = _stage(stages, f"eval_{name}", lambda name=name: evaluate(
            name, c.env, tasks, {"kind": name, "seed": cfg.seed}, runner, c.workers, run_dir / "eval"))
        results[name] = out
        wall[f"eval_{name}"] = out["wall_s"]
    extra = {"export": export, "phases": phases, "eval_temperature": e.temperature}
    report = write_report(run_dir, results, wall, extra)
    print_report(report)
    return report


def _split_attempts(boost_dir: Path, trials: int) -> dict:
    """Write the model's attempts as a dataset: verified successes in train/, failures in failures/."""
    from data_collection.store import TrajectoryStore, group_episodes

    out = TrajectoryStore(boost_dir / "data")
    successes = failures = 0
    for t in range(trials):
        src = TrajectoryStore(boost_dir / "attempts" / f"trial{t}")
        eps = group_episodes(src.read_records("episodes"))
        good = [r for ep in eps if ep[-1]["episode_success"] for r in ep]
        bad = [r for ep in eps if not ep[-1]["episode_success"] for r in ep]
        successes += len({r["episode_id"] for r in good})
        failures += len({r["episode_id"] for r in bad})
        if bad:
            out.write_shard("failures", f"trial{t}", bad)
        out.write_shard("train", f"trial{t}", good)
    return {"successes": successes, "failures": failures}
