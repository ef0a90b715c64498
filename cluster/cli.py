"""The `lam` command line: one entry point per stage.

    lam pipeline --config configs/quickstart.yaml
    lam collect --env babyai --levels BabyAI-GoToLocal-v0 --episodes 5000 --workers 2 --out runs/data
    lam train --data runs/data --config configs/train/tiny.yaml --out runs/train
    lam serve --model runs/train/export --port 8000
    lam eval --model-url http://127.0.0.1:8000/v1 --model export --episodes 200 --out runs/eval
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _pipeline(a) -> None:
    from cluster.config import load_pipeline_config
    from cluster.pipeline import run_pipeline

    cfg = load_pipeline_config(a.config, a.set)
    if a.run_dir:
        cfg.run_dir = a.run_dir
    run_pipeline(cfg)


def _collect(a) -> None:
    from data_collection.collector import CollectConfig, collect
    from envs.registry import get_env_spec, sample_tasks

    levels = a.levels.split(",")
    sample_tasks(a.env, levels, "train", 1)  # validates env and levels before anything starts
    stats = collect(
        CollectConfig(env=a.env, levels=levels, episodes=a.episodes, workers=a.workers, out=a.out,
                      max_steps=a.max_steps, time_limit_s=a.time_limit_s, shard_episodes=a.shard_episodes),
        resume=a.resume,
    )
    print(json.dumps(stats, indent=1))


def _train(a) -> None:
    import yaml

    from training.train import TrainConfig, train

    raw = {}
    if a.config:
        if not Path(a.config).exists():
            raise FileNotFoundError(f"config file {a.config} does not exist")
        raw = yaml.safe_load(Path(a.config).read_text()) or {}
        raw = raw.get("train", raw)
    for kv in a.overrides:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ValueError(f"override {kv!r} must look like key=value")
        raw[k] = yaml.safe_load(v)
    print(json.dumps(train(a.data, a.out, TrainConfig(**raw), resume=a.resume), indent=1))


def _serve(a) -> None:
    from serving.server import main as serve_main

    argv = ["--model", a.model, "--host", a.host, "--port", str(a.port), "--backend", a.backend]
    if a.api_key:
        argv += ["--api-key", a.api_key]
    serve_main(argv)


def _eval(a) -> None:
    from envs.registry import sample_tasks
    from eval.evaluator import evaluate, replay_dir

    if a.replay:
        print(json.dumps(replay_dir(a.replay), indent=1))
        return
    levels = a.levels.split(",")
    tasks = sample_tasks(a.env, levels, "test", a.episodes * len(levels), base_seed=a.base_seed)
    if a.policy == "model":
        if not a.model_url:
            raise ValueError("--policy model needs --model-url (an OpenAI-compatible /v1 base URL)")
        policy = {"kind": "model", "base_url": a.model_url, "model": a.model, "temperature": a.temperature}
    else:
        policy = {"kind": a.policy}
    runner = {"max_steps": a.max_steps, "history_window": a.history_window}
    result = evaluate(a.policy, a.env, tasks, policy, runner, a.workers, a.out)
    print(json.dumps(result, indent=1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lam", description="lam-stack: collect → train → serve → evaluate action models")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("pipeline", help="run all four stages from one YAML config (resumable)")
    s.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/quickstart.yaml")
    s.add_argument("--run-dir", default=None, help="override run_dir from the config")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    s.set_defaults(fn=_pipeline)

    s = sub.add_parser("collect", help="collect environment-verified expert trajectories with Ray actors")
    s.add_argument("--env", default="babyai")
    s.add_argument("--levels", default="BabyAI-GoToLocal-v0", help="comma-separated levels")
    s.add_argument("--episodes", type=int, default=1000)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--out", required=True)
    s.add_argument("--max-steps", type=int, default=64)
    s.add_argument("--time-limit-s", type=float, default=10.0)
    s.add_argument("--shard-episodes", type=int, default=500)
    s.add_argument("--resume", action="store_true")
    s.set_defaults(fn=_collect)

    s = sub.add_parser("train", help="train an action model with DeepSpeed")
    s.add_argument("--data", required=True)
    s.add_argument("--config", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--resume", action="store_true")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    s.set_defaults(fn=_train)

    s = sub.add_parser("serve", help="serve a model directory behind an OpenAI-compatible API")
    s.add_argument("--model", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--backend", default="auto", choices=["auto", "transformers", "vllm"])
    s.add_argument("--api-key", default=None, help="also read from LAM_API_KEY")
    s.set_defaults(fn=_serve)

    s = sub.add_parser("eval", help="evaluate a policy on held-out tasks with Ray agent actors")
    s.add_argument("--policy", default="model", choices=["model", "random", "expert"])
    s.add_argument("--model-url", default=None)
    s.add_argument("--model", default="lam-action-model")
    s.add_argument("--env", default="babyai")
    s.add_argument("--levels", default="BabyAI-GoToLocal-v0")
    s.add_argument("--episodes", type=int, default=200)
    s.add_argument("--max-steps", type=int, default=64)
    s.add_argument("--history-window", type=int, default=8)
    s.add_argument("--temperature", type=float, default=0.0)
    s.add_argument("--workers", type=int, default=8)
    s.add_argument("--base-seed", type=int, default=0)
    s.add_argument("--out", default="runs/eval")
    s.add_argument("--replay", default=None, help="replay the saved episodes in DIR and check every verdict")
    s.set_defaults(fn=_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except KeyboardInterrupt:
        print("lam: interrupted; completed shards and checkpoints are kept, re-run to resume", file=sys.stderr)
        return 130
    except Exception as e:  # one line naming the problem, not a traceback
        from cluster.config import ConfigError
        from data_collection.store import DatasetError

        known = (ConfigError, DatasetError, FileNotFoundError, FileExistsError, ValueError, PermissionError)
        if isinstance(e, known) or type(e).__name__ == "ValidationError":
            msg = str(e).splitlines()[0] if type(e).__name__ != "ValidationError" else _pydantic_line(e)
            print(f"lam {args.cmd}: error: {msg}", file=sys.stderr)
            return 2
        raise
    return 0


def _pydantic_line(e) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"unknown key {where!r}" if err["type"] == "extra_forbid" or err["type"] == "extra_forbidden" else f"{where}: {err['msg']}"


if __name__ == "__main__":
    sys.exit(main())
