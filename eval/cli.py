"""`lam eval`: this stage's command line (cluster/cli.py only dispatches here).

    lam eval --model-url http://127.0.0.1:8000/v1 --model export --episodes 200 --out runs/eval
    lam eval --suite robustness --model-url URL --levels BabyAI-GoToLocal-v0 --trials 3 --out runs/rob [--resume]
    lam eval compare runs/rob runs/rob-baseline --out runs/rob-vs-baseline
    lam eval --replay runs/eval/model
    lam eval --suite planted --policy expert --env toolworld --levels L1,L3,L5 --p 0.3 --out runs/planted
    lam eval --ablate all --policy model --model-url URL --model export --episodes 100 --out runs/ablate
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used, so `lam eval --help` stays quick
    from agent.runner_config import RunnerConfig


def add_args(s: argparse.ArgumentParser) -> None:
    s.description = ("lam eval [--suite success|robustness|safety|faults|planted] [--ablate COMPONENTS] ... | "
                     "lam eval compare DIR1 DIR2 ...")
    s.add_argument("words", nargs="*", metavar="compare DIR", help="`compare DIR1 DIR2 ...`: side-by-side report of runs")
    s.add_argument("--suite", default=None, choices=["success", "robustness", "safety", "faults", "planted"],
                   help="run a suite and write report.json/md/html to --out (without it: the plain evaluation)")
    s.add_argument("--ablate", default=None, metavar="COMPONENTS",
                   help="harness ablation (eval/ablation.py): memory,feedback,retry,grounding,safety,focus or all; runs "
                        "the full harness, each one off, and all off, on the same tasks")
    s.add_argument("--safety", default=None, metavar="NAME=LEVEL,...",
                   help="the guard's levels per action name or class, e.g. drop=forbidden (allowed|confirm|forbidden)")
    s.add_argument("--policy", default="model", choices=["model", "random", "expert", "prefix-expert", "faulty-expert"])
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
    s.add_argument("--verifier", default=None, metavar="PATH",
                   help="score every episode with an outcome verifier (lam train-verifier OUT/best) next to the verdict")


def main(a) -> int:
    from agent.runner_config import RunnerConfig, wire
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
        if "same_tasks" in json.loads((out / "report.json").read_text()):  # plain evaluations: the table itself
            print((out / "report.md").read_text())
        print(f"comparison of {len(a.words) - 1} runs: {', '.join(str(p) for p in sorted(out.glob('report.*')))}")
        return 0
    if a.verifier and a.suite is not None:
        raise ValueError("--verifier scores the plain evaluation's episodes; run it without --suite")
    if a.verifier:  # a missing or mismatched checkpoint stops here, before any episode runs
        from agent.outcome_verifier import load_verifier
        from data_collection.schema import SCHEMA_VERSION

        load_verifier(a.verifier, SCHEMA_VERSION)
    levels = a.levels.split(",")
    ablate = None
    if a.ablate is not None:
        from eval.ablation import parse_components

        if a.suite not in (None, "ablation"):
            raise ValueError(f"--ablate runs its own suite; drop --suite {a.suite}")
        ablate, a.suite = parse_components(a.ablate), "ablation"
    safety = _safety_levels(a.safety) if a.safety is not None else None
    sample_tasks(a.env, levels, "test", 1)  # validates env and levels before anything starts
    if a.policy == "model":
        if not a.model_url:
            raise ValueError("--policy model needs --model-url (an OpenAI-compatible /v1 base URL)")
        from agent.policy_factory import model_spec

        policy = model_spec(a.model_url, a.model, a.temperature, a.seed, api_key=a.api_key,
                            timeout_s=a.request_timeout_s)
        check_model_endpoint(policy)  # a dead URL or a wrong --model: one line now, before any Ray work
    else:
        policy = {"kind": a.policy, "seed": a.seed}
    runner = RunnerConfig(max_steps=a.max_steps, history_window=a.history_window)
    if safety is not None:
        runner.safety = safety  # set (and so in fingerprints and reports) only when given
    if a.suite is None:  # the original single-policy evaluation, as the pipeline runs it
        return _plain(a, levels, policy, runner)
    from eval.report import print_suite_summary
    from eval.suites import SuiteConfig, run_suite

    runner.time_limit_s = a.time_limit_s or 60.0  # the suite's report and fingerprints hold the dict form
    cfg = SuiteConfig(suite=a.suite, env=a.env, levels=levels, episodes=a.episodes, trials=a.trials, policy=policy,
                      runner=wire(runner), workers=a.workers, out=a.out or f"runs/eval-{a.suite}", base_seed=a.base_seed,
                      variants=a.variants.split(",") if a.variants else None, p=a.p, ablate=ablate)
    report = run_suite(cfg, resume=a.resume, html=not a.no_html)
    print_suite_summary([(Path(cfg.out), report)])
    print(f"reports: {cfg.out}/report.json, report.md" + ("" if a.no_html else ", report.html"))
    for why in report["failures"]:  # the report is written; the exit code says it measured nothing usable
        print(f"lam eval: error: {why}", file=sys.stderr)
    return 1 if report["failures"] else 0


def _safety_levels(text: str) -> dict[str, str]:
    """`--safety drop=forbidden,rm=confirm` -> {"drop": "forbidden", "rm": "confirm"}; one-line errors."""
    from agent.safety import LEVELS

    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, level = item.partition("=")
        if not sep or not name.strip() or level.strip() not in LEVELS:
            raise ValueError(f"--safety {item!r}: expected NAME=LEVEL with LEVEL one of {', '.join(LEVELS)}")
        out[name.strip()] = level.strip()
    return out


def _plain(a, levels: list[str], policy: dict, runner: RunnerConfig) -> int:
    import time

    from agent.runner_config import wire
    from envs.registry import sample_tasks
    from eval.evaluator import evaluate
    from eval.report import print_eval_summary, write_eval_report

    out = Path(a.out or time.strftime("runs/eval-%Y%m%d-%H%M%S"))  # a fresh default: never resumes a stale run
    tasks = sample_tasks(a.env, levels, "test", a.episodes * len(levels), base_seed=a.base_seed)
    if a.time_limit_s:
        runner.time_limit_s = a.time_limit_s  # set (and so in the fingerprint) only when given
    result = evaluate(a.policy, a.env, tasks, policy, runner, a.workers, out, trials=a.trials)
    config = {"env": a.env, "levels": levels, "episodes": a.episodes, "trials": a.trials, "runner": wire(runner),
              "base_seed": a.base_seed, "policy": {k: v for k, v in policy.items() if k not in ("api_key", "base_url")}}
    report = write_eval_report(out, a.policy, result, config)
    if a.verifier:  # the verifier's score next to the environment's verdict (eval/verifier_report.py)
        from eval.verifier_report import markdown, verifier_section

        report["verifier"] = verifier_section(out / a.policy, a.verifier, out)
        (out / "report.json").write_text(json.dumps(report, indent=1))
        with open(out / "report.md", "a") as f:
            f.write(markdown(report["verifier"]))
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print_eval_summary(report)
        if a.verifier:
            print(markdown(report["verifier"]))
    print(f"lam eval: reports in {out}/report.json and {out}/report.md; episodes in {out / a.policy}", file=sys.stderr)
    for why in report["failures"]:
        print(f"lam eval: error: {why}", file=sys.stderr)
    return 1 if report["failures"] else 0
