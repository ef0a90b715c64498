"""A served tool-world model on train-split vs test-split tasks: does it do worse on names it never saw?

    lam serve --model RUN/train/export --port 8771 --max-new-tokens 512 &
    python bench/toolworld_splits.py --url http://127.0.0.1:8771/v1 --per-level 40

Greedy, the runner's defaults (12 steps, 2 retries), `--per-level` tasks per level of each split; prints
successes per (split, level) with Wilson 95% intervals and the train-minus-test change (Newcombe).
"""
from __future__ import annotations

import argparse
import collections
from concurrent.futures import ThreadPoolExecutor

from agent.episode import RunnerConfig, run_episode
from agent.policies import ModelPolicy
from envs.base import Task
from envs.registry import make_env
from envs.splits import TEST_SEEDS
from eval.metrics import newcombe_diff, wilson

LEVELS = ("L1", "L2", "L3", "L4", "L5")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="export")
    p.add_argument("--per-level", type=int, default=40)
    p.add_argument("--workers", type=int, default=8)
    a = p.parse_args()

    def one(job):
        split, level, seed = job
        policy = ModelPolicy(a.url, a.model, temperature=0.0, max_tokens=512)
        ep = run_episode(make_env("toolworld"), policy, Task("toolworld", level, seed, split), RunnerConfig(max_steps=12))
        return split, level, ep.success

    jobs = [(split, level, (TEST_SEEDS[0] if split == "test" else 0) + 777 + s)
            for split in ("train", "test") for level in LEVELS for s in range(a.per_level)]
    ok, n = collections.Counter(), collections.Counter()
    with ThreadPoolExecutor(a.workers) as pool:
        for split, level, success in pool.map(one, jobs):
            for key in ((split, level), split):
                ok[key] += success
                n[key] += 1
    for split in ("train", "test"):
        for key in [(split, lv) for lv in LEVELS] + [split]:
            lo, hi = wilson(ok[key], n[key])
            print(f"{key!s:18} {ok[key]:4d}/{n[key]:<4d} {ok[key] / n[key]:6.1%} [{lo:.1%}, {hi:.1%}]")
    d, (lo, hi) = newcombe_diff(ok["train"], n["train"], ok["test"], n["test"])
    print(f"train - test: {d:+.1%} [{lo:+.1%}, {hi:+.1%}]")


if __name__ == "__main__":
    main()
