"""The pipeline driver: collect → train (imitation [→ DAgger] [→ self-boost → DPO] [→ online RL]) → serve → evaluate.

    lam pipeline --config configs/quickstart.yaml
    lam pipeline --config configs/recipe.yaml        # all three LAM training phases
    lam pipeline --config configs/recipe.yaml --set 'phases=[imitation,self_boost,dpo,rl]'   # and online RL
    lam pipeline --config configs/quickstart.yaml --set 'phases=[imitation,dagger]'    # the expert's corrections

Re-running with the same run_dir skips finished stages (markers in run_dir/stages.json) and
resumes unfinished ones from what they left on disk. Each stage records the configuration its
output was made from (its inputs and a digest that also covers the stages it reads from); a
re-run whose config changes a recorded stage is refused, naming the stage and the changed keys,
unless `--rerun-changed` deletes and redoes the changed stages (and every stage that reads them).
Held-out success is measured after every training phase, so the report shows what each phase changed.
(Over 400 lines: the one driver every phase passes through, read top to bottom; each stage's logic is its package's.)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from rich.console import Console

from agent.runner_config import RunnerConfig, wire
from cluster.config import PIPELINE_COLLECT_KEYS, ConfigError, PipelineConfig, ensure_writable
from data_collection.atomic_file import write_atomic
from data_collection.collect_config import CollectConfig

console = Console(stderr=True, soft_wrap=True)  # progress, never cut or wrapped; stdout is left to the report
SERVED_NAME = "lam-action-model"
# bump when a code change makes earlier stage outputs unusable with the same config
DIGEST_VERSION = 1


class _Stages:
    """run_dir/stages.json: each finished stage's result, and under "_records" what each stage was made
    from (inputs, digest, output paths; state "started" until it finishes)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "stages.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.records: dict[str, dict] = self.data.pop("_records", {})

    def done(self, name: str) -> dict | None:
        return self.data.get(name)

    def record(self, name: str) -> dict | None:
        return self.records.get(name)

    def start(self, name: str, planned: dict) -> None:
        self.records[name] = {**planned, "state": "started"}
        self._save()

    def mark(self, name: str, info: dict) -> None:
        self.data[name] = info
        if name in self.records:
            self.records[name]["state"] = "done"
        self._save()

    def forget(self, name: str) -> None:
        self.data.pop(name, None)
        self.records.pop(name, None)
        self._save()

    def _save(self) -> None:
        write_atomic(self.path, json.dumps({**self.data, "_records": self.records}, indent=1))


def _stage(stages: _Stages, plan: dict, name: str, fn) -> dict:
    info = stages.done(name)
    if info is None:
        stages.start(name, plan[name])
        t0 = time.perf_counter()
        info = {**fn(), "wall_s": time.perf_counter() - t0}
        stages.mark(name, info)
    return info


def _runner(cfg: PipelineConfig) -> RunnerConfig:
    e = cfg.eval
    return RunnerConfig(max_steps=e.max_steps, max_retries=e.max_retries, history_window=cfg.train.history_window,
                        time_limit_s=120.0)


def _model_name(cfg: PipelineConfig, phase: str) -> str:
    return f"model-{phase}" if len(cfg.phases) > 1 else "model"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def stage_plan(cfg: PipelineConfig) -> dict[str, dict]:
    """Every stage this config runs, in run order: {"inputs", "after", "outputs", "digest"}.

    inputs: the config keys the stage's output depends on; after: the stages whose output it reads;
    the digest covers both (and DIGEST_VERSION). Knobs that change speed, not results (workers,
    threads, ports, batch sizes), are left out, so changing them reuses finished stages."""
    c, e, b = cfg.collect, cfg.eval, cfg.self_boost
    speed = {"workers", "threads"}
    runner = {"eval.max_steps": e.max_steps, "eval.max_retries": e.max_retries,
              "train.history_window": cfg.train.history_window}
    held_out = {"collect.env": c.env, "eval": e.model_dump(exclude=speed | {"baselines", "also"}), "seed": cfg.seed,
                **runner}
    plan: dict[str, dict] = {}

    def add(name: str, inputs: dict, after: list[str], outputs: list[str]) -> None:
        flat = _flat(inputs)
        deps = {a: plan[a]["digest"] for a in after}
        blob = json.dumps({"v": DIGEST_VERSION, "inputs": flat, "after": deps}, sort_keys=True, default=str)
        plan[name] = {"inputs": flat, "after": after, "outputs": outputs,
                      "digest": hashlib.sha256(blob.encode()).hexdigest()[:16]}

    base = CollectConfig()
    collect_in = {k: v for k, v in c.model_dump(exclude=speed | {"out", "depth"}).items()
                  if k in PIPELINE_COLLECT_KEYS or v != getattr(base, k)}
    add("collect", {"collect": collect_in}, [], ["data"])
    add("train", {"train": cfg.train.model_dump(exclude=speed)}, ["collect"], ["train"])
    model, sft_data = "train", ["collect"]
    for phase in cfg.phases:
        if phase == "dagger":
            d = cfg.dagger
            add("dagger_attempts", {"dagger": d.model_dump(include={"tasks", "max_prefix", "temperature", "base_seed"}),
                                    "collect.levels": c.levels, "serve.backend": cfg.serve.backend, **held_out},
                [model], ["dagger"])
            add("dagger_train", {"train": cfg.train.model_dump(exclude=speed), "dagger": d.model_dump(include={"epochs", "lr"})},
                ["collect", "dagger_attempts", model], ["train_dagger"])
            model, sft_data = "dagger_train", ["collect", "dagger_attempts"]
        elif phase == "self_boost":
            add("self_boost_attempts", {"self_boost": b.model_dump(include={"tasks", "trials", "temperature", "base_seed"}),
                                        "collect.levels": c.levels, "serve.backend": cfg.serve.backend, **held_out},
                [model], ["boost"])
            add("self_boost_train", {"train": cfg.train.model_dump(exclude=speed),
                                     "self_boost": b.model_dump(include={"epochs", "lr"})},
                [*sft_data, "self_boost_attempts", model], ["train_boost"])
            model = "self_boost_train"
        elif phase == "dpo":
            add("dpo_train", {"dpo": cfg.dpo.model_dump(exclude=speed), **runner}, ["self_boost_attempts", model],
                ["train_dpo"])
            model = "dpo_train"
        elif phase == "rl":
            add("rl_train", {"rl": _rl_config(cfg).model_dump(exclude=speed), "serve.backend": cfg.serve.backend},
                [model], ["train_rl"])
            model = "rl_train"
        add(f"eval_{phase}", {**held_out, "serve.backend": cfg.serve.backend}, [model],
            [f"eval/{_model_name(cfg, phase)}"])
    for x in e.also:  # the final model on another env: same sampling and runner, its own tasks
        add(_also_stage(x), {"also": x.model_dump(), "eval.temperature": e.temperature, "seed": cfg.seed,
                             "serve.backend": cfg.serve.backend, **runner}, [model],
            [f"eval/{_also_name(cfg, x)}"])
    for name in e.baselines:  # no model, no sampling temperature
        add(f"eval_{name}", {k: v for k, v in _flat(held_out).items() if k != "eval.temperature"}, [],
            [f"eval/{name}"])
    return plan


def _rl_config(cfg: PipelineConfig):
    """The rl section with what the pipeline decides for every phase: the env, the levels (collect's unless
    rl.levels is set), the runner's limits (eval's and train's) and the seed."""
    r, e = cfg.rl, cfg.eval
    update = {"env": cfg.collect.env, "max_steps": e.max_steps, "max_retries": e.max_retries,
              "history_window": cfg.train.history_window}
    if "levels" not in r.model_fields_set:
        update["levels"] = cfg.collect.levels
    return r.model_copy(update=update)


def _also_stage(x) -> str:
    return f"eval_also_{x.env}"


def _also_name(cfg: PipelineConfig, x) -> str:
    return f"{_model_name(cfg, cfg.phases[-1])}@{x.env}"


def _older_plan(run_dir: Path) -> dict:
    """For stages finished by a lam that recorded no digests: the plan of the config.json it wrote."""
    try:
        return stage_plan(PipelineConfig.model_validate_json((run_dir / "config.json").read_text()))
    except Exception:  # missing or from an incompatible version: those stages count as changed
        return {}


def _show(v) -> str:
    return json.dumps(v, default=str)


def _changes(old: dict, new: dict) -> str:
    keys = [k for k in sorted(old.keys() | new.keys()) if old.get(k, "?") != new.get(k, "?")]
    return ", ".join(f"{k} {_show(old.get(k, '(unset)'))} -> {_show(new.get(k, '(unset)'))}" for k in keys)


def check_stages(stages: _Stages, plan: dict, run_dir: Path, rerun_changed: bool) -> list[str]:
    """Refuse (ConfigError, nothing changed) when a recorded stage was made from other inputs than `plan`
    says, or with rerun_changed delete those stages' outputs so they run again. Returns the stages redone."""
    older = None
    stale: dict[str, str] = {}
    for name, planned in plan.items():
        rec = stages.record(name)
        if rec is None and stages.done(name) is not None:
            older = _older_plan(run_dir) if older is None else older
            rec = older.get(name)
            if rec is None:
                stale[name] = "no record of the config it was made from"
                continue
            stages.records[name] = {**rec, "state": "done"}  # adopt it, so the next run has the record
        if rec is not None and rec["digest"] != planned["digest"]:
            stale[name] = _changes(rec["inputs"], planned["inputs"])
    if not stale:
        return []
    if not rerun_changed:
        first = next(n for n, why in stale.items() if why) if any(stale.values()) else next(iter(stale))
        why = stale[first] or "made by another version of lam"
        later = [n for n in stale if n != first]
        raise ConfigError(
            f"{run_dir}: stage {first} was made with another config ({why})"
            + (f"; {', '.join(later)} depend on it or changed too" if later else "")
            + f"; nothing was changed: pass --rerun-changed to delete and redo {', '.join(stale)}, "
              "or use another --run-dir")
    for name in stale:
        rec = stages.record(name) or plan[name]
        for out in rec["outputs"]:
            shutil.rmtree(run_dir / out, ignore_errors=True)
        stages.forget(name)
        console.print(f"[bold yellow]{name}[/]: config changed ({stale[name] or 'upstream stage changed'}); redoing it")
    return list(stale)


def _server_args(cfg: PipelineConfig) -> dict:
    """start_server_subprocess's keywords from the serve section (evaluation, self-boosting and RL alike)."""
    sv = cfg.serve
    return {"threads": sv.threads, "max_batch_size": sv.max_batch_size, "backend": sv.backend, "port": sv.port,
            "model_name": SERVED_NAME, "max_new_tokens_limit": sv.max_new_tokens,
            "extra_args": ["--prefill-thread", sv.prefill_thread, "--packed-prefill", sv.packed_prefill,
                           "--replicas", str(sv.replicas)]}


def _with_server(cfg: PipelineConfig, export: str, fn):
    from serving.launch import start_server_subprocess

    server = start_server_subprocess(export, **_server_args(cfg))
    console.print(f"[bold]serve[/]: {export} at {server.base_url} (pid {server.pid})")
    try:
        return fn(server.base_url)
    finally:
        server.stop()


def _model_policy(base_url: str, temperature: float, seed: int) -> dict:
    return {"kind": "model", "base_url": base_url, "model": SERVED_NAME, "temperature": temperature, "seed": seed}


def run_pipeline(cfg: PipelineConfig, rerun_changed: bool = False) -> dict:
    from data_collection.collector import collect
    from envs.registry import sample_tasks
    from eval.evaluator import evaluate
    from eval.metrics import effect
    from eval.report import print_report, write_report
    from training.train import train

    run_dir = ensure_writable(cfg.run_dir)
    if cfg.ray.address:  # every stage's init_ray() joins this cluster instead of starting one
        os.environ["RAY_ADDRESS"] = cfg.ray.address
    stages = _Stages(run_dir)
    plan = stage_plan(cfg)
    check_stages(stages, plan, run_dir, rerun_changed)
    # every stage on disk now matches cfg (it was checked or deleted), so cfg describes the run's data
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=1))
    wall: dict[str, float] = {}
    e = cfg.eval
    runner = _runner(cfg)
    tasks = sample_tasks(cfg.collect.env, e.levels, "test", e.episodes * len(e.levels), base_seed=e.base_seed)
    results: dict[str, dict] = {}
    phases: dict[str, dict] = {}

    # 1. collect ------------------------------------------------------------------------
    data_dir = run_dir / "data"
    c = cfg.collect
    info = _stage(stages, plan, "collect", lambda: collect(
        c.model_copy(update={"out": str(data_dir)}),
        resume=data_dir.exists(),
    ))
    wall["collect"] = info["wall_s"]
    console.print(f"[bold]collect[/]: {info.get('kept', '?')} verified episodes kept of {info.get('episodes', '?')} "
                  f"({info.get('failures', 0)} failures, {info.get('dropped_time_limit', 0)} over time limit, "
                  f"{info.get('duplicates', 0)} duplicates) in {info['wall_s']:.0f}s")

    def eval_phase(phase: str, export: str) -> None:
        key = f"eval_{phase}"
        name = _model_name(cfg, phase)
        out = _stage(stages, plan, key, lambda: _with_server(cfg, export, lambda url: evaluate(
            name, c.env, tasks, _model_policy(url, e.temperature, cfg.seed), runner, e.workers,
            run_dir / "eval")))
        wall[key] = out["wall_s"]
        results[name] = out
        m = out["overall"]
        phases[phase] = {"success_rate": m["success_rate"], "success_ci95": m["success_ci95"],
                         "successes": m["successes"], "episodes": m["episodes"], "export": export}
        change = ""
        prev_name, prev = list(phases.items())[-2] if len(phases) > 1 else (None, None)
        if prev and prev["episodes"] and m["episodes"]:  # what this phase changed, same held-out seeds, 95% CI
            eff = effect(prev, m)
            phases[phase]["change_vs_previous"] = {"previous": prev_name, "delta": eff["delta"], "ci95": eff["ci95"]}
            change = (f", {100 * eff['delta']:+.1f} pp vs {prev_name} "
                      f"[{100 * eff['ci95'][0]:+.1f}, {100 * eff['ci95'][1]:+.1f}]")
        if not m["episodes"]:  # every episode an infrastructure error: a rate over nothing would be a lie
            console.print(f"[bold]evaluate[/] after {phase}: no episodes (all infrastructure errors, "
                          f"see {run_dir / 'eval'}) ({out['wall_s']:.0f}s)")
        else:
            console.print(f"[bold]evaluate[/] after {phase}: success {100 * m['success_rate']:.1f}% "
                          f"on {m['episodes']} held-out episodes{change} ({out['wall_s']:.0f}s)")

    # 2. imitation ------------------------------------------------------------------------
    train_dir = run_dir / "train"
    info = _stage(stages, plan, "train", lambda: train(str(data_dir), str(train_dir), cfg.train,
                                                 resume=(train_dir / "checkpoints").exists()))
    wall["train"] = info["wall_s"]
    export = info["export"]
    console.print(f"[bold]train[/]: {info['steps']} steps, {info['params'] / 1e6:.1f}M params, final loss "
                  f"{info['final_loss']:.3f}, eval loss {info['eval_loss']:.3f} in {info['wall_s']:.0f}s → {export}")
    eval_phase("imitation", export)

    # 3. DAgger: the model starts fresh training tasks, the expert takes over where it left them; the
    # expert's steps (its labels on the model's own states) join the demonstrations
    sft_data = [str(data_dir)]
    if "dagger" in cfg.phases:
        d, dagger_dir = cfg.dagger, run_dir / "dagger"
        dagger_tasks = sample_tasks(c.env, c.levels, "train", d.tasks, base_seed=d.base_seed)

        def takeovers() -> dict:
            from data_collection.attempts import collect_attempts

            return _with_server(cfg, export, lambda url: collect_attempts(
                dagger_dir / "data", c.env, dagger_tasks, 1,
                lambda t: {**_model_policy(url, d.temperature, cfg.seed + 2000 + t), "kind": "takeover",
                           "max_prefix": d.max_prefix}, wire(runner), d.workers))

        info = _stage(stages, plan, "dagger_attempts", takeovers)
        wall["dagger_attempts"] = info["wall_s"]
        console.print(f"[bold]dagger[/]: {info['successes']} episodes the expert finished from the model's states "
                      f"(of {d.tasks} tasks; {info['failures']} failed)")
        sft_data.append(str(dagger_dir / "data"))
        dagger_cfg = cfg.train.model_copy(update={"model": export, "epochs": d.epochs, "lr": d.lr, "warmup_steps": 10})
        info = _stage(stages, plan, "dagger_train", lambda: train(list(sft_data), str(run_dir / "train_dagger"),
                                                            dagger_cfg, resume=True))
        wall["dagger_train"] = info["wall_s"]
        export = info["export"]
        eval_phase("dagger", export)

    # 4. self-boosting: the model attempts fresh training tasks; verified successes join the data
    boost_dir = run_dir / "boost"
    if "self_boost" in cfg.phases:
        b = cfg.self_boost
        boost_tasks = sample_tasks(c.env, c.levels, "train", b.tasks, base_seed=b.base_seed)

        def attempts() -> dict:  # written as lam collect writes a dataset: ledger, de-duplication, card
            from data_collection.attempts import collect_attempts

            return _with_server(cfg, export, lambda url: collect_attempts(
                boost_dir / "data", c.env, boost_tasks, b.trials,
                lambda t: _model_policy(url, b.temperature, cfg.seed + 1000 + t), wire(runner), b.workers))

        info = _stage(stages, plan, "self_boost_attempts", attempts)
        wall["self_boost_attempts"] = info["wall_s"]
        console.print(f"[bold]self-boost[/]: {info['successes']} verified successes, {info['failures']} failures "
                      f"from {b.tasks} tasks × {b.trials} trials")
        boost_cfg = cfg.train.model_copy(update={"model": export, "epochs": b.epochs, "lr": b.lr, "warmup_steps": 10})
        info = _stage(stages, plan, "self_boost_train", lambda: train([*sft_data, str(boost_dir / "data")],
                                                                str(run_dir / "train_boost"), boost_cfg, resume=True))
        wall["self_boost_train"] = info["wall_s"]
        export = info["export"]
        eval_phase("self_boost", export)

    # 5. DPO on the model's own success/failure pairs -----------------------------------------
    if "dpo" in cfg.phases:
        from training.dpo import NoPairsError, train_dpo

        dpo_cfg = cfg.dpo.model_copy(update={"history_window": cfg.train.history_window})
        try:
            info = _stage(stages, plan, "dpo_train", lambda: train_dpo([str(boost_dir / "data")], export,
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

    # 6. online RL: the model's own rollouts, the environment's verdict as reward ---------------
    if "rl" in cfg.phases:
        from training.rl import train_rl

        rl_dir = run_dir / "train_rl"
        info = _stage(stages, plan, "rl_train", lambda: train_rl(
            export, str(rl_dir), _rl_config(cfg), resume=(rl_dir / "checkpoints").exists(),
            server=_server_args(cfg), log=console.print))
        wall["rl_train"] = info["wall_s"]
        export = info["export"]
        console.print(f"[bold]rl[/]: {info['iterations']} iterations, rollout success "
                      f"{100 * info['first_success_rate']:.1f}% -> {100 * info['last_success_rate']:.1f}% "
                      f"(rollouts {info['rollout_s']:.0f}s, updates {info['update_s']:.0f}s)")
        eval_phase("rl", export)

    # the final model on other environments (eval.also) -------------------------------------------
    also: dict[str, dict] = {}
    for x in e.also:
        name = _also_name(cfg, x)
        x_tasks = sample_tasks(x.env, x.levels, "test", x.episodes * len(x.levels), base_seed=x.base_seed)
        x_runner = runner.model_copy(update={"max_steps": x.max_steps or e.max_steps})
        out = _stage(stages, plan, _also_stage(x), lambda x=x, name=name, x_tasks=x_tasks, x_runner=x_runner:
                     _with_server(cfg, export, lambda url: evaluate(
                         name, x.env, x_tasks, _model_policy(url, e.temperature, cfg.seed), x_runner, e.workers,
                         run_dir / "eval")))
        results[name] = out
        wall[_also_stage(x)] = out["wall_s"]
        m = out["overall"]
        also[name] = {"env": x.env, "levels": x.levels, "episodes": m["episodes"],
                      "success_rate": m["success_rate"] if m["episodes"] else None,
                      "success_ci95": m["success_ci95"] if m["episodes"] else None,
                      "infra_errors": m.get("infra_errors", 0)}
        console.print(f"[bold]evaluate[/] {name} ({', '.join(x.levels)}): "
                      + (f"success {100 * m['success_rate']:.1f}% on {m['episodes']} episodes" if m["episodes"]
                         else "no episodes (all infrastructure errors)") + f" ({out['wall_s']:.0f}s)")

    # baselines on the same held-out seeds ------------------------------------------------------
    for name in e.baselines:
        out = _stage(stages, plan, f"eval_{name}", lambda name=name: evaluate(
            name, c.env, tasks, {"kind": name, "seed": cfg.seed}, runner, c.workers, run_dir / "eval"))
        results[name] = out
        wall[f"eval_{name}"] = out["wall_s"]
    extra = {"export": export, "phases": phases, "eval_temperature": e.temperature, "eval_seed": cfg.seed}
    if also:  # absent for configs without eval.also, so their report is unchanged
        extra["also"] = also
    report = write_report(run_dir, results, wall, extra)
    print_report(report)
    return report
