"""The BALROG BabyAI levels (envs/babyai_balrog.py): the bot's and a random policy's success per goal type.

    python bench/balrog_levels.py --seeds 200 [--split test]

Each episode runs through the one episode runner (agent/episode.py) with BALROG's 100-step limit; success is
minigrid's verdict. Prints a table (success with a 95% Wilson interval, mean steps of the successes).
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    from agent.episode import RunnerConfig, run_episode
    from agent.policies import ExpertPolicy, RandomPolicy
    from envs.babyai_balrog import GOALS, MAX_STEPS, level_id
    from envs.base import Task
    from envs.registry import make_env
    from eval.metrics import wilson

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--split", default="test", choices=["train", "test"])
    a = ap.parse_args()
    env = make_env("babyai")
    print(f"| goal type | bot success | bot mean steps | random success |  ({a.seeds} {a.split} seeds each, {MAX_STEPS}-step limit)")
    print("|---|---|---|---|")
    for goal in GOALS:
        row = []
        for policy in (ExpertPolicy(), RandomPolicy(seed=0)):
            t0, wins, steps = time.perf_counter(), 0, []
            for s in range(a.seeds):
                base = 1_000_000_000 if a.split == "test" else 0
                ep = run_episode(env, policy, Task("babyai", level_id(goal), base + s, a.split), RunnerConfig(max_steps=MAX_STEPS))
                wins += bool(ep.success)
                if ep.success:
                    steps.append(len(ep.steps))
            lo, hi = wilson(wins, a.seeds)
            row.append(f"{100 * wins / a.seeds:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
            if isinstance(policy, ExpertPolicy):
                row.append(f"{sum(steps) / max(1, len(steps)):.1f}")
        print(f"| {goal} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
