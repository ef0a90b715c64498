"""The `lam` command line: one entry point per stage.

    lam pipeline --config configs/quickstart.yaml
    lam collect --env babyai --levels BabyAI-GoToLocal-v0 --episodes 5000 --workers 2 --out runs/data [--resume]
    lam data stats runs/data ; lam data show runs/data --episode BabyAI-GoToLocal-v0-16 ; lam data repair runs/data
    lam train --data runs/data --config configs/train/tiny.yaml --out runs/train [--resume | --overwrite]
    lam dpo --data runs/data --model runs/train/export --out runs/dpo [--resume | --overwrite]
    lam serve --model runs/train/export --port 8000
    lam eval --model-url http://127.0.0.1:8000/v1 --model export --episodes 200 --out runs/eval
    lam eval --suite robustness --model-url URL --levels BabyAI-GoToLocal-v0 --trials 3 --out runs/rob [--resume]
    lam eval compare runs/rob runs/rob-baseline --out runs/rob-vs-baseline
    lam cluster up|down --config configs/cluster/ray-up.yaml
    lam cluster submit --address http://127.0.0.1:8265 --config configs/quickstart.yaml [--working-dir .]
    lam cluster status --address http://127.0.0.1:8265
    lam agent serve --host 127.0.0.1 --port 8100 --db runs/agent/sessions.db
    lam agent audit --env bfcl --levels multi_turn_base --limit 50
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path


def _pipeline(a) -> int:
    from cluster.config import load_pipeline_config
    from cluster.pipeline import run_pipeline

    cfg = load_pipeline_config(a.config, a.set)
    if a.run_dir:
        cfg.run_dir = a.run_dir
    report = run_pipeline(cfg, rerun_changed=a.rerun_changed)
    # a policy whose every evaluation episode was an infrastructure error has no result: say so, exit 1
    empty = [name for name, r in report["policies"].items() if not r["overall"]["episodes"]]
    if empty:
        print(f"lam pipeline: error: no evaluation episodes for {', '.join(empty)} (all infrastructure errors); "
              f"see {cfg.run_dir}/eval", file=sys.stderr)
        return 1
    return 0


def _collect(a) -> int:
    from data_collection.collector import CollectConfig, CollectionError, collect
    from envs.registry import get_env_spec

    spec = get_env_spec(a.env)
    if a.list_levels:
        for level in spec.levels:
            print(level + ("   (needs --time-limit-s)" if level in spec.needs_time_limit else ""))
        return 0
    if not a.out:
        raise ValueError("--out DIR is required (where the shards, manifest and card go)")
    if a.policy == "model":
        if not a.model_url:
            raise ValueError("--policy model needs --model-url (an OpenAI-compatible /v1 base URL) and --model")
        policy = {"kind": "model", "base_url": a.model_url, "model": a.model, "temperature": a.temperature,
                  "seed": a.seed}
        if a.api_key:
            policy["api_key"] = a.api_key
    elif a.policy == "gold":
        if not a.gold:
            raise ValueError("--policy gold needs --gold DIR_OR_JSONL (recorded action sequences to replay)")
        policy = {"kind": "gold", "path": str(Path(a.gold).resolve())}
    else:
        policy = {"kind": a.policy, "seed": a.seed} if a.policy == "random" else {"kind": a.policy}
    cfg = CollectConfig(
        env=a.env, levels=a.levels.split(","), episodes=a.episodes, workers=a.workers, out=a.out, policy=policy,
        max_steps=a.max_steps, time_limit_s=a.time_limit_s, shard_episodes=a.shard_episodes, base_seed=a.base_seed,
        variants=a.variants.split(",") if a.variants else [], max_attempts=a.max_attempts,
    )
    try:
        stats = collect(cfg, resume=a.resume, progress=not a.no_progress)
    except CollectionError as e:
        print(f"lam collect: error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:  # a plain re-run is refused (the dataset exists): name the command that continues
        print(f"lam collect: interrupted; the completed shards in {a.out} are kept; continue with: "
              f"{_resume_command(a)}", file=sys.stderr)
        return 130
    print(json.dumps(stats, indent=1))
    print(f"lam collect: {stats['kept']}/{stats['requested']} unique verified episodes in {a.out}/train "
          f"({stats['episodes']} run now at {stats['episodes_per_s']:.0f}/s, {stats['failures']} failures, "
          f"{stats['duplicates']} duplicates); card: {a.out}/README.md", file=sys.stderr)
    return 0


def _resume_command(a) -> str:
    """This `lam collect` command line with --resume: as typed, or (called from Python, or with an
    API key, which is never printed) every option that differs from its default."""
    import shlex

    typed = [w for w in sys.argv[1:] if w != "--resume"]
    if typed[:1] == ["collect"] and a.api_key is None:  # else sys.argv is another program's (main() from Python)
        try:
            if vars(build_parser().parse_args(typed)) == {**vars(a), "resume": False}:
                return shlex.join(["lam", *typed, "--resume"])
        except SystemExit:
            pass
    defaults = vars(build_parser().parse_args(["collect"]))
    words = ["lam", "collect"]
    for key, value in vars(a).items():
        if key in ("fn", "cmd", "resume") or value == defaults.get(key):
            continue
        flag = "--" + key.replace("_", "-")
        words += [flag] if value is True else [flag, "$LAM_API_KEY" if key == "api_key" else str(value)]
    return shlex.join(words + ["--resume"]).replace("'$LAM_API_KEY'", '"$LAM_API_KEY"')


def _data(a) -> int:
    from data_collection.card import dataset_stats, render_card, transcript

    if a.action == "stats":
        s = dataset_stats(a.dir)
        print(json.dumps(s, indent=1) if a.json else render_card(s).split("---\n", 2)[-1].strip())
    elif a.action == "repair":
        from data_collection.repair import describe, repair

        for line in describe(repair(a.dir), a.dir):
            print(f"lam data repair: {line}")
    elif a.action == "upgrade":
        from data_collection.upgrade import upgrade

        done = upgrade(a.dir, a.new)
        print(f"lam data upgrade: {done['rows']} rows in {done['shards']} shards ({', '.join(done['envs'])}) "
              f"written to {a.new} as schema version 3 (prompts re-rendered); {a.dir} is unchanged")
    else:
        print(transcript(a.dir, a.episode))
    return 0


def _train(a) -> None:
    from training.run_dir import check_flags, prepare_out_dir
    from training.train import TrainConfig, launch_multiprocess, read_config, train

    raw = read_config(a.config, a.overrides)
    cfg = TrainConfig(**raw)  # a bad key fails here, before any rank or Ray worker starts
    # once, before any rank starts: a previous run in OUT is continued (--resume), deleted (--overwrite) or refused
    check_flags(a.resume, a.overwrite)
    prepare_out_dir(a.out, a.resume, a.overwrite)
    if a.ray_workers:
        from training.ray_train import train_on_ray

        print(json.dumps(train_on_ray(a.data, a.out, raw, a.ray_workers, a.gpus, a.resume), indent=1))
        return
    if a.nproc > 1:
        rc = launch_multiprocess(a.nproc, a.data, a.out, a.config, a.overrides, a.resume)
        if rc:
            raise RuntimeError(f"training ranks failed with exit code {rc}")
        return
    print(json.dumps(train(a.data, a.out, cfg, resume=a.resume, overwrite=a.overwrite), indent=1))


def _dpo(a) -> None:
    from training.dpo import DPOConfig, train_dpo
    from training.run_dir import check_flags
    from training.train import read_config

    check_flags(a.resume, a.overwrite)
    cfg = DPOConfig(**read_config(a.config, a.overrides, section="dpo"))
    print(json.dumps(train_dpo(a.data.split(","), a.model, a.out, cfg, resume=a.resume, overwrite=a.overwrite),
                     indent=1))


def _eval(a) -> int:
    from envs.registry import sample_tasks
    from eval.evaluator import check_model_endpoint

    if a.replay:
        from eval.replays import replay_dir

        result = replay_dir(a.replay)
        print(json.dumps(result, indent=1))
        if result["mismatched"]:  # a failed check fails the command
            print(f"lam eval --replay: {len(result['mismatched'])} of {result['checked']} replayed verdicts differ "
                  f"from the recorded ones in {a.replay}", file=sys.stderr)
            return 1
        return 0
    if a.words:
        if a.words[0] != "compare" or len(a.words) < 2:
            raise ValueError(f"unknown eval command {' '.join(a.words)!r}; usage: lam eval compare DIR1 DIR2 ... [--out DIR]")
        from eval.report import compare

        out = compare(a.words[1:], a.out or "runs/eval-compare", html=not a.no_html)
        print(f"comparison of {len(a.words) - 1} runs: {out}/report.md, {out}/report.html")
        return 0
    levels = a.levels.split(",")
    sample_tasks(a.env, levels, "test", 1)  # validates env and levels before anything starts
    if a.policy == "model":
        if not a.model_url:
            raise ValueError("--policy model needs --model-url (an OpenAI-compatible /v1 base URL)")
        policy = {"kind": "model", "base_url": a.model_url, "model": a.model, "temperature": a.temperature,
                  "seed": a.seed}
        if a.request_timeout_s:
            policy["timeout_s"] = a.request_timeout_s
        if a.api_key:
            policy["api_key"] = a.api_key
        check_model_endpoint(policy)  # a dead URL or a wrong --model: one line now, before any Ray work
    else:
        policy = {"kind": a.policy, "seed": a.seed}
    runner = {"max_steps": a.max_steps, "history_window": a.history_window}
    if a.suite is None:  # the original single-policy evaluation, as the pipeline runs it
        return _eval_plain(a, levels, policy, runner)
    from eval.report import print_suite_summary
    from eval.suites import SuiteConfig, run_suite

    runner["time_limit_s"] = a.time_limit_s or 60.0
    cfg = SuiteConfig(suite=a.suite, env=a.env, levels=levels, episodes=a.episodes, trials=a.trials, policy=policy,
                      runner=runner, workers=a.workers, out=a.out or f"runs/eval-{a.suite}", base_seed=a.base_seed,
                      variants=a.variants.split(",") if a.variants else None, p=a.p)
    report = run_suite(cfg, resume=a.resume, html=not a.no_html)
    print_suite_summary([(Path(cfg.out), report)])
    print(f"reports: {cfg.out}/report.json, report.md" + ("" if a.no_html else ", report.html"))
    for why in report["failures"]:  # the report is written; the exit code says it measured nothing usable
        print(f"lam eval: error: {why}", file=sys.stderr)
    return 1 if report["failures"] else 0


def _eval_plain(a, levels: list[str], policy: dict, runner: dict) -> int:
    import time

    from envs.registry import sample_tasks
    from eval.evaluator import evaluate
    from eval.report import print_eval_summary, write_eval_report

    out = Path(a.out or time.strftime("runs/eval-%Y%m%d-%H%M%S"))  # a fresh default: never resumes a stale run
    tasks = sample_tasks(a.env, levels, "test", a.episodes * len(levels), base_seed=a.base_seed)
    if a.time_limit_s:
        runner["time_limit_s"] = a.time_limit_s
    result = evaluate(a.policy, a.env, tasks, policy, runner, a.workers, out, trials=a.trials)
    config = {"env": a.env, "levels": levels, "episodes": a.episodes, "trials": a.trials, "runner": runner,
              "base_seed": a.base_seed, "policy": {k: v for k, v in policy.items() if k not in ("api_key", "base_url")}}
    report = write_eval_report(out, a.policy, result, config)
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print_eval_summary(report)
    print(f"lam eval: reports in {out}/report.json and {out}/report.md; episodes in {out / a.policy}", file=sys.stderr)
    for why in report["failures"]:
        print(f"lam eval: error: {why}", file=sys.stderr)
    return 1 if report["failures"] else 0


def _cluster(a) -> int:
    from cluster import launch

    if a.action in ("up", "down"):
        make = launch.up_command if a.action == "up" else launch.down_command
        return launch.run(make(a.config), dry_run=a.dry_run)
    if a.action == "submit":
        from cluster.jobs import JobRequest, submit

        if any("=" not in kv for kv in a.env):
            raise ValueError(f"--env {next(kv for kv in a.env if '=' not in kv)!r} must look like KEY=VALUE")
        env = dict(kv.split("=", 1) for kv in a.env)
        req = JobRequest(address=a.address, config=a.config, working_dir=a.working_dir, overrides=a.set, env=env,
                         entrypoint_num_cpus=a.entrypoint_num_cpus, entrypoint_num_gpus=a.entrypoint_num_gpus,
                         entrypoint_resources=json.loads(a.entrypoint_resources) if a.entrypoint_resources else None,
                         submission_id=a.submission_id)
        _, status = submit(req, follow=not a.no_wait)
        return 0 if status in ("SUCCEEDED", "PENDING") else 1
    # status
    if a.config:
        return launch.run(launch.status_command(config=a.config), dry_run=a.dry_run)
    from cluster.jobs import job_table

    nodes = launch.node_table(a.address)
    print(f"{len(nodes)} alive node(s) at {a.address}: {sum(n['CPU'] for n in nodes):g} CPU, {sum(n['GPU'] for n in nodes):g} GPU")
    for n in nodes:
        print(f"  {'head  ' if n['head'] else 'worker'} {n['ip']:<15} {n['node_id'][:12]}  CPU {n['CPU']:g}  GPU {n['GPU']:g}")
    jobs = job_table(a.address)
    print(f"{len(jobs)} job(s)")
    for j in jobs:
        print(f"  {j['id']:<28} {j['status']:<10} {j['entrypoint']}")
    return 0


def _agent(a) -> int:
    if a.action == "serve":
        from agent.api import main as serve_main

        argv = ["--host", a.host, "--port", str(a.port), "--db", a.db, "--max-live", str(a.max_live)]
        for key in a.api_key:
            argv += ["--api-key", key]
        serve_main(argv)
        return 0
    from agent.replay import main as audit_main

    argv = ["--env", a.env, "--limit", str(a.limit), "--max-steps", str(a.max_steps)]
    audit_main(argv + (["--levels", a.levels] if a.levels else []))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lam", description="lam-stack: collect → train → serve → evaluate action models")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("pipeline", help="run all four stages from one YAML config (resumable)")
    s.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/quickstart.yaml")
    s.add_argument("--run-dir", default=None, help="override run_dir from the config")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    s.add_argument("--rerun-changed", action="store_true",
                   help="a finished stage whose config changed is deleted and run again (with every stage that reads "
                        "it); without this flag such a re-run is refused")
    s.set_defaults(fn=_pipeline)

    s = sub.add_parser("collect", help="collect environment-verified trajectories with Ray collector actors",
                       description="Collect until OUT/train holds exactly --episodes unique episodes the environment "
                                   "verified; failures go, labelled, to OUT/failures (data_collection/collector.py).")
    s.add_argument("--env", default="babyai", help="environment family (envs/registry.py)")
    s.add_argument("--levels", "--tasks", dest="levels", default="BabyAI-GoToLocal-v0",
                   help="comma-separated levels / task families of the env (see --list-levels)")
    s.add_argument("--variants", default="", help="mission variants to add per level: paraphrase,then,after,and")
    s.add_argument("--episodes", type=int, default=1000, help="unique verified episodes wanted in train/")
    s.add_argument("--workers", type=int, default=2, help="Ray collector actors (0: one plain process, no Ray)")
    s.add_argument("--out", default=None, help="dataset directory")
    s.add_argument("--policy", default="expert", choices=["expert", "gold", "model", "random"])
    s.add_argument("--gold", default=None, help="--policy gold: a lam dataset dir or JSONL of action sequences")
    s.add_argument("--model-url", default=None, help="--policy model: OpenAI-compatible /v1 base URL")
    s.add_argument("--model", default="lam-action-model")
    s.add_argument("--temperature", type=float, default=0.0)
    s.add_argument("--api-key", default=None, help="also read from LAM_API_KEY; never stored")
    s.add_argument("--seed", type=int, default=0, help="policy sampling seed (model, random)")
    s.add_argument("--max-steps", type=int, default=None, help="per episode (default: the environment's own limit)")
    s.add_argument("--time-limit-s", type=float, default=None, help="per-episode wall-clock limit (default: the env's)")
    s.add_argument("--shard-episodes", type=int, default=500, help="tasks per actor batch (= max episodes per shard)")
    s.add_argument("--base-seed", type=int, default=0)
    s.add_argument("--max-attempts", type=int, default=None, help="give up after this many tasks (default 20 N + 1000)")
    s.add_argument("--resume", action="store_true", help="continue OUT to exactly --episodes")
    s.add_argument("--list-levels", action="store_true", help="print the env's levels and exit")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=_collect)

    s = sub.add_parser("data", help="inspect a collected dataset: stats (the card), show one episode, repair")
    dsub = s.add_subparsers(dest="action", required=True)
    d = dsub.add_parser("stats", help="counts per level, success rates, episode lengths (validates every shard)")
    d.add_argument("dir")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=_data)
    d = dsub.add_parser("show", help="one episode as a readable transcript")
    d.add_argument("dir")
    d.add_argument("--episode", required=True, help="episode id LEVEL-SEED, e.g. BabyAI-GoToLocal-v0-16")
    d.set_defaults(fn=_data)
    d = dsub.add_parser("repair", help="move missing/corrupt shards to DIR/quarantine/ so --resume re-collects them")
    d.add_argument("dir")
    d.set_defaults(fn=_data)
    d = dsub.add_parser("upgrade", help="convert a schema-version-2 dataset to version 3 (re-rendered prompts)")
    d.add_argument("dir", help="the version-2 dataset (only read)")
    d.add_argument("new", help="where the version-3 dataset goes (must not exist)")
    d.set_defaults(fn=_data)

    s = sub.add_parser("train", help="train an action model with DeepSpeed")
    s.add_argument("--data", required=True)
    s.add_argument("--config", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--resume", action="store_true", help="continue the run in OUT from its latest checkpoint")
    s.add_argument("--overwrite", action="store_true", help="delete the previous run's files in OUT and start over")
    s.add_argument("--nproc", type=int, default=1, help="ranks on this node (torchrun; gloo on CPU)")
    s.add_argument("--ray-workers", type=int, default=0, help="train on a Ray cluster with N Ray Train workers")
    s.add_argument("--gpus", action="store_true", help="with --ray-workers: one GPU per worker (NCCL)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    s.set_defaults(fn=_train)

    s = sub.add_parser("dpo", help="preference training (DPO) on success/failure pairs of the same task",
                       description="DPO (training/dpo.py), the pipeline's dpo phase as a command: pairs one verified "
                                   "success (train/) with one failure (failures/) of the same task.")
    s.add_argument("--data", required=True,
                   help="comma-separated dataset dirs with train/ and failures/ (e.g. a pipeline run's boost/data)")
    s.add_argument("--model", required=True, help="Hugging Face model dir to start from, e.g. runs/train/export")
    s.add_argument("--config", default=None, help="YAML with a dpo: section (configs/recipe.yaml) or DPO keys")
    s.add_argument("--out", required=True)
    s.add_argument("--resume", action="store_true", help="continue the run in OUT from its latest checkpoint")
    s.add_argument("--overwrite", action="store_true", help="delete the previous run's files in OUT and start over")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="DPOConfig keys: beta=0.1 lr=2e-5 ...")
    s.set_defaults(fn=_dpo)

    from serving.server import add_server_args, run_from_args  # light: no torch/transformers at import

    s = sub.add_parser("serve", help="serve a model directory behind an OpenAI-compatible API")
    add_server_args(s)
    s.set_defaults(fn=run_from_args)

    s = sub.add_parser("eval", help="evaluate a policy on held-out tasks with Ray agent actors (suites, compare)",
                       description="lam eval [--suite success|robustness|safety|faults] ... | lam eval compare DIR1 DIR2 ...")
    s.add_argument("words", nargs="*", metavar="compare DIR", help="`compare DIR1 DIR2 ...`: side-by-side report of runs")
    s.add_argument("--suite", default=None, choices=["success", "robustness", "safety", "faults"],
                   help="run a suite and write report.json/md/html to --out (without it: the plain evaluation)")
    s.add_argument("--policy", default="model", choices=["model", "random", "expert", "prefix-expert"])
    s.add_argument("--model-url", default=None)
    s.add_argument("--model", default="lam-action-model")
    s.add_argument("--api-key", default=None, help="also read from LAM_API_KEY; never written to reports")
    s.add_argument("--request-timeout-s", type=float, default=None, help="per model request (default 60)")
    s.add_argument("--env", default="babyai")
    s.add_argument("--levels", default="BabyAI-GoToLocal-v0")
    s.add_argument("--episodes", type=int, default=200, help="held-out tasks per level")
    s.add_argument("--trials", type=int, default=1, help="runs of every task (pass^k for k <= trials)")
    s.add_argument("--max-steps", type=int, default=64)
    s.add_argument("--history-window", type=int, default=8)
    s.add_argument("--time-limit-s", type=float, default=None, help="per episode (suites: 60 unless given)")
    # the pipeline's default too (cluster/config.py EvalSection): sampled, as greedy policies loop
    s.add_argument("--temperature", type=float, default=0.7, help="model sampling temperature (stated in every report)")
    s.add_argument("--seed", type=int, default=0, help="policy seed: model sampling, random and prefix-expert")
    s.add_argument("--workers", type=int, default=8)
    s.add_argument("--base-seed", type=int, default=0)
    s.add_argument("--variants", default=None, help="comma-separated subset of the suite's variants")
    s.add_argument("--p", type=float, default=None, help="probability of every perturbation/fault in the suite")
    s.add_argument("--resume", action="store_true", help="continue an interrupted suite run in --out")
    s.add_argument("--no-html", action="store_true", help="skip report.html (plots and replays)")
    s.add_argument("--out", default=None,
                   help="default runs/eval-TIMESTAMP (plain), runs/eval-SUITE (suite), runs/eval-compare")
    s.add_argument("--json", action="store_true", help="plain evaluation: print report.json on stdout, not a table")
    s.add_argument("--replay", default=None, help="replay the saved episodes in DIR and check every verdict")
    s.set_defaults(fn=_eval)

    s = sub.add_parser("cluster", help="launch on a Ray cluster: ray up/down, Ray Jobs submission, status")
    csub = s.add_subparsers(dest="action", required=True)
    for name, what in (("up", "ray up: create or update the cluster"), ("down", "ray down: tear the cluster down")):
        c = csub.add_parser(name, help=what)
        c.add_argument("--config", required=True, help="ray up cluster YAML, e.g. configs/cluster/ray-up.yaml")
        c.add_argument("--dry-run", action="store_true", help="print the ray command without running it")
        c.set_defaults(fn=_cluster)
    c = csub.add_parser("submit", help="run `lam pipeline` on a running cluster as a Ray Job; follows its logs")
    c.add_argument("--address", default="http://127.0.0.1:8265", help="Ray dashboard (Jobs API) address")
    c.add_argument("--config", required=True, help="pipeline YAML inside --working-dir")
    c.add_argument("--working-dir", default=".", help="directory uploaded to the cluster (respects .gitignore)")
    c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. run_dir=/mnt/shared/runs/qs")
    c.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the job")
    c.add_argument("--entrypoint-num-cpus", type=float, default=None)
    c.add_argument("--entrypoint-num-gpus", type=float, default=None,
                   help="GPUs reserved for the driver (training runs in it): 1 places it on a GPU node")
    c.add_argument("--entrypoint-resources", default=None, metavar="JSON", help='e.g. \'{"gpu_node": 1}\'')
    c.add_argument("--submission-id", default=None)
    c.add_argument("--no-wait", action="store_true", help="submit and return without following the job")
    c.set_defaults(fn=_cluster)
    c = csub.add_parser("status", help="nodes and jobs of a cluster (dashboard address) or `ray status` on a ray-up head")
    c.add_argument("--address", default="http://127.0.0.1:8265", help="Ray dashboard address")
    c.add_argument("--config", default=None, help="ray up YAML: run `ray status` on its head instead")
    c.add_argument("--dry-run", action="store_true")
    c.set_defaults(fn=_cluster)

    s = sub.add_parser("agent", help="the agent API (sessions over the episode runner); replay audits")
    asub = s.add_subparsers(dest="action", required=True)
    c = asub.add_parser("serve", help="serve the agent HTTP API (FastAPI, sessions persisted in SQLite)")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=8100)
    c.add_argument("--db", default="runs/agent/sessions.db", help="SQLite file; sessions survive restarts")
    c.add_argument("--api-key", action="append", default=[], metavar="KEY[:MAX_LIVE]",
                   help="require this key (repeatable); MAX_LIVE caps its live sessions (also LAM_AGENT_API_KEYS)")
    c.add_argument("--max-live", type=int, default=64, help="live sessions in total")
    c.set_defaults(fn=_agent)
    c = asub.add_parser("audit", help="expert, replay and perturbed replays per task: does the verdict notice?")
    c.add_argument("--env", default="bfcl")
    c.add_argument("--levels", default=None, help="comma-separated; default: every level of the env")
    c.add_argument("--limit", type=int, default=20, help="tasks per level")
    c.add_argument("--max-steps", type=int, default=64)
    c.set_defaults(fn=_agent)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
