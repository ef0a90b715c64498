"""`lam collect` and `lam data`: this stage's command line (cluster/cli.py only dispatches here).

    lam collect --env babyai --levels BabyAI-GoToLocal-v0 --episodes 5000 --workers 2 --out runs/data [--resume]
    lam data stats runs/data ; lam data show runs/data --episode BabyAI-GoToLocal-v0-16 ; lam data repair runs/data
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def add_collect_args(s: argparse.ArgumentParser) -> None:
    s.description = ("Collect until OUT/train holds exactly --episodes unique episodes the environment "
                     "verified; failures go, labelled, to OUT/failures (data_collection/collector.py).")
    s.add_argument("--env", default="babyai", help="environment family (envs/registry.py)")
    s.add_argument("--levels", "--tasks", dest="levels", default="BabyAI-GoToLocal-v0",
                   help="comma-separated levels / task families of the env (see --list-levels)")
    s.add_argument("--variants", default="", help="mission variants to add per level: paraphrase,then,after,and")
    s.add_argument("--episodes", type=int, default=1000, help="unique verified episodes wanted in train/")
    s.add_argument("--workers", type=int, default=2, help="Ray collector actors (0: one plain process, no Ray)")
    s.add_argument("--out", default=None, help="dataset directory")
    s.add_argument("--policy", default="expert", choices=["expert", "gold", "model", "random", "takeover"],
                   help="takeover: the model (--model-url) for a random 0..--max-prefix steps, then the expert")
    s.add_argument("--gold", default=None, help="--policy gold: a lam dataset dir or JSONL of action sequences")
    s.add_argument("--model-url", default=None, help="--policy model: OpenAI-compatible /v1 base URL")
    s.add_argument("--model", default="lam-action-model")
    s.add_argument("--temperature", type=float, default=0.0)
    s.add_argument("--max-prefix", type=int, default=40, help="--policy takeover: most steps the model takes first")
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


def _policy(a) -> dict:
    if a.policy in ("model", "takeover"):
        if not a.model_url:
            raise ValueError(f"--policy {a.policy} needs --model-url (an OpenAI-compatible /v1 base URL) and --model")
        if a.max_prefix < 0:
            raise ValueError(f"--max-prefix must be at least 0, not {a.max_prefix}")
        from agent.policy_factory import model_spec

        spec = model_spec(a.model_url, a.model, a.temperature, a.seed, api_key=a.api_key)
        return spec if a.policy == "model" else {**spec, "kind": "takeover", "max_prefix": a.max_prefix}
    if a.policy == "gold":
        if not a.gold:
            raise ValueError("--policy gold needs --gold DIR_OR_JSONL (recorded action sequences to replay)")
        return {"kind": "gold", "path": str(Path(a.gold).resolve())}
    return {"kind": a.policy, "seed": a.seed} if a.policy == "random" else {"kind": a.policy}


def collect_main(a) -> int:
    from data_collection.collector import CollectConfig, CollectionError, collect
    from envs.registry import get_env_spec

    spec = get_env_spec(a.env)
    if a.list_levels:
        for level in spec.levels:
            print(level + ("   (needs --time-limit-s)" if level in spec.needs_time_limit else ""))
        return 0
    if not a.out:
        raise ValueError("--out DIR is required (where the shards, manifest and card go)")
    policy = _policy(a)
    if a.episodes <= 0 or a.shard_episodes <= 0 or a.workers < 0:  # the flags' names, not the config's keys
        raise ValueError("--episodes and --shard-episodes must be positive, --workers at least 0")
    # every value explicit: `lam collect`'s defaults are its flags' (shard 500, the env's own step and time limits)
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
              f"{resume_command(a)}", file=sys.stderr)
        return 130
    print(json.dumps(stats, indent=1))
    print(f"lam collect: {stats['kept']}/{stats['requested']} unique verified episodes in {a.out}/train "
          f"({stats['episodes']} run now at {stats['episodes_per_s']:.0f}/s, {stats['failures']} failures, "
          f"{stats['duplicates']} duplicates); card: {a.out}/README.md", file=sys.stderr)
    return 0


def _collect_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lam collect")
    add_collect_args(p)
    return p


def resume_command(a) -> str:
    """This `lam collect` command line with --resume: as typed, or (called from Python, or with an
    API key, which is never printed) every option that differs from its default."""
    mine = {k: v for k, v in vars(a).items() if k not in ("fn", "cmd")}
    typed = [w for w in sys.argv[1:] if w != "--resume"]
    if typed[:1] == ["collect"] and a.api_key is None:  # else sys.argv is another program's (main() from Python)
        try:
            if vars(_collect_parser().parse_args(typed[1:])) == {**mine, "resume": False}:
                return shlex.join(["lam", *typed, "--resume"])
        except SystemExit:
            pass
    defaults = vars(_collect_parser().parse_args([]))
    words = ["lam", "collect"]
    for key, value in mine.items():
        if key == "resume" or value == defaults.get(key):
            continue
        flag = "--" + key.replace("_", "-")
        words += [flag] if value is True else [flag, "$LAM_API_KEY" if key == "api_key" else str(value)]
    return shlex.join(words + ["--resume"]).replace("'$LAM_API_KEY'", '"$LAM_API_KEY"')


def add_data_args(s: argparse.ArgumentParser) -> None:
    dsub = s.add_subparsers(dest="action", required=True)
    d = dsub.add_parser("stats", help="counts per level, success rates, episode lengths (validates every shard)")
    d.add_argument("dir")
    d.add_argument("--json", action="store_true")
    d = dsub.add_parser("show", help="one episode as a readable transcript")
    d.add_argument("dir")
    d.add_argument("--episode", required=True, help="episode id LEVEL-SEED, e.g. BabyAI-GoToLocal-v0-16")
    d = dsub.add_parser("repair", help="move missing/corrupt shards to DIR/quarantine/ so --resume re-collects them")
    d.add_argument("dir")
    d = dsub.add_parser("upgrade", help="convert a schema-version-2 dataset to version 3 (re-rendered prompts)")
    d.add_argument("dir", help="the version-2 dataset (only read)")
    d.add_argument("new", help="where the version-3 dataset goes (must not exist)")


def data_main(a) -> int:
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
