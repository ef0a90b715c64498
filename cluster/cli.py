"""The `lam` command line: a dispatcher. Each stage owns its commands (`add_args`/`main` beside the stage).

    lam pipeline --config configs/quickstart.yaml
    lam collect --env babyai --levels BabyAI-GoToLocal-v0 --episodes 5000 --workers 2 --out runs/data [--resume]
    lam data stats runs/data ; lam data show runs/data --episode BabyAI-GoToLocal-v0-16 ; lam data repair runs/data
    lam train --data runs/data --config configs/train/tiny.yaml --out runs/train [--resume | --overwrite]
    lam dpo --data runs/data --model runs/train/export --out runs/dpo [--resume | --overwrite]
    lam rl --model runs/train/export --out runs/rl [--resume | --overwrite] [--model-url URL] [key=value ...]
    lam train-verifier --data runs/qs/eval,runs/planted --out runs/verifier [--lam runs/qs/train/export]
    lam serve --model runs/train/export --port 8000
    lam eval --model-url http://127.0.0.1:8000/v1 --model export --episodes 200 --out runs/eval
    lam eval --suite robustness --model-url URL --levels BabyAI-GoToLocal-v0 --trials 3 --out runs/rob [--resume]
    lam eval compare runs/rob runs/rob-baseline --out runs/rob-vs-baseline
    lam cluster up|down --config configs/cluster/ray-up.yaml
    lam cluster submit --address http://127.0.0.1:8265 --config configs/quickstart.yaml [--working-dir .]
    lam cluster status --address http://127.0.0.1:8265
    lam agent serve --host 127.0.0.1 --port 8100 --db runs/agent/sessions.db
    lam agent audit --env bfcl --levels multi_turn_base --limit 50
    lam view runs/eval-success --port 8300
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

# command, its one-line help, and where it lives: module, the function adding its flags, the one running it
COMMANDS = [
    ("pipeline", "run all four stages from one YAML config (resumable)",
     "cluster.commands", "add_pipeline_args", "pipeline_main"),
    ("collect", "collect environment-verified trajectories with Ray collector actors",
     "data_collection.cli", "add_collect_args", "collect_main"),
    ("data", "inspect a collected dataset: stats (the card), show one episode, repair",
     "data_collection.cli", "add_data_args", "data_main"),
    ("train", "train an action model with DeepSpeed", "training.cli", "add_train_args", "train_main"),
    ("dpo", "preference training (DPO) on success/failure pairs of the same task",
     "training.cli", "add_dpo_args", "dpo_main"),
    ("rl", "online RL (GRPO) on the model's own rollouts; new weights pushed to the running server",
     "training.cli", "add_rl_args", "rl_main"),
    ("train-verifier", "train the outcome verifier: P(environment-verified success | transcript), with baselines",
     "training.verifier_cli", "add_args", "main"),
    ("serve", "serve a model directory behind an OpenAI-compatible API",
     "serving.server", "add_server_args", "run_from_args"),
    ("eval", "evaluate a policy on held-out tasks with Ray agent actors (suites, compare)", "eval.cli", "add_args", "main"),
    ("cluster", "launch on a Ray cluster: ray up/down, Ray Jobs submission, status",
     "cluster.commands", "add_cluster_args", "cluster_main"),
    # data_collection.session_fleet: agent.cli's commands, plus the Ray fleet behind `serve --ray`
    ("agent", "the agent API (sessions over the episode runner); replay audits", "data_collection.session_fleet",
     "add_args", "main"),
    ("view", "browse a finished evaluation run or a dataset: episodes, transcripts, replays (127.0.0.1, read-only)",
     "eval.view", "add_args", "main"),
]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole `lam` parser; given `argv`, only the chosen command's module is imported (the agent
    API's FastAPI alone takes half a second), every other command is listed by name and help."""
    chosen = None if argv is None else next((w for w in argv if not w.startswith("-")), "")
    p = argparse.ArgumentParser(prog="lam", description="lam-stack: collect → train → serve → evaluate action models")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_, module, add_args, run in COMMANDS:
        s = sub.add_parser(name, help=help_)
        if chosen is None or chosen == name:
            stage = importlib.import_module(module)
            getattr(stage, add_args)(s)
            s.set_defaults(fn=getattr(stage, run))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    # A job started in the background by a non-interactive shell (`lam collect ... &`, nohup) inherits SIGINT
    # ignored; Ctrl-C or `kill -INT` must still stop it cleanly (completed shards kept, resumable).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rc = args.fn(args)
    except KeyboardInterrupt:
        print("lam: interrupted; completed shards and checkpoints are kept, re-run to resume", file=sys.stderr)
        return 130
    except Exception as e:  # one line naming the problem, not a traceback
        from cluster.config import ConfigError
        from data_collection.store import DatasetError

        known = (ConfigError, DatasetError, FileNotFoundError, FileExistsError, ValueError, PermissionError,
                 ConnectionError)
        if isinstance(e, known) or type(e).__name__ == "ValidationError":
            msg = str(e).splitlines()[0] if type(e).__name__ != "ValidationError" else _pydantic_line(e)
            print(f"lam {args.cmd}: error: {msg}", file=sys.stderr)
            return 2
        raise
    return rc if isinstance(rc, int) else 0


def _pydantic_line(e) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"unknown key {where!r}" if err["type"] == "extra_forbid" or err["type"] == "extra_forbidden" else f"{where}: {err['msg']}"


if __name__ == "__main__":
    sys.exit(main())
