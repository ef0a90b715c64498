"""The tool world's levels measured: expert and random through the agent's episode runner, per split.

    python bench/toolworld_levels.py --tasks 200 --out envs/TOOLWORLD_LEVELS.md

Per level and split: the expert's success and mean calls over the first --tasks tasks of the split
(the registry's seeds, as `lam collect` draws them), random's success on the same tasks, and the
number of distinct tasks (request + initial state) and distinct requests among the first --count seeds.
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
import time

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy, RandomPolicy
from envs.registry import make_env, sample_tasks, seed_range
from envs.toolworld_tasks import LEVELS, generate

DESCRIPTION = {
    "L1": "one call (mkdir, touch, rm, mv, send to an id, add contact, watchlist add/remove, buy at a price, ticket)",
    "L2": "two independent calls on two backends",
    "L3": "a lookup whose result feeds the next call (find → rm/mv, get_user_id → send, get_stock_info → buy)",
    "L4": "3-4 calls across two backends (cat → get_user_id → send; lookup + another backend's call or lookup)",
    "L5": "4-6 calls and a question whose answer must be in the final reply",
}


def measure(level: str, split: str, n_tasks: int, n_count: int, max_steps: int = 20) -> dict:
    env, cfg = make_env("toolworld"), RunnerConfig(max_steps=max_steps)
    tasks = sample_tasks("toolworld", [level], split, n_tasks)
    expert = [run_episode(env, ExpertPolicy(), t, cfg) for t in tasks]
    rand = [run_episode(env, RandomPolicy(seed=0), t, cfg) for t in tasks]
    lo = seed_range(split)[0]
    generated = [generate(level, split, lo + i) for i in range(n_count)]
    return {
        "level": level, "split": split, "tasks": n_tasks,
        "expert_success": sum(e.success for e in expert) / n_tasks,
        "expert_calls": sum(len(s.tool_calls) for e in expert for s in e.steps) / n_tasks,
        "max_calls": max(sum(len(s.tool_calls) for s in e.steps) for e in expert),
        "random_success": sum(e.success for e in rand) / n_tasks,
        "distinct_tasks": len({g.key() for g in generated}), "distinct_requests": len({g.request for g in generated}),
        "counted": n_count,
    }


def table(rows: list[dict]) -> str:
    out = ["| level | split | expert success | expert mean calls (max) | random success | distinct tasks | distinct requests |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['level']} | {r['split']} | {r['expert_success']:.0%} ({r['tasks']}) | "
                   f"{r['expert_calls']:.2f} ({r['max_calls']}) | {r['random_success']:.1%} | "
                   f"{r['distinct_tasks']} of {r['counted']} | {r['distinct_requests']} of {r['counted']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=200, help="episodes per level and split (expert and random)")
    p.add_argument("--count", type=int, default=5000, help="seeds per level and split whose tasks are counted")
    p.add_argument("--out", default=None, help="also write the table with its header to this markdown file")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = [measure(level, split, a.tasks, a.count) for level in LEVELS for split in ("train", "test")]
    text = table(rows)
    print(text)
    if a.out:
        try:
            code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        except OSError:
            code = "unknown"
        levels = "\n".join(f"- **{lv}**: {d}" for lv, d in DESCRIPTION.items())
        header = (f"`python bench/toolworld_levels.py --tasks {a.tasks} --count {a.count} --out {a.out}` on "
                  f"{datetime.date.today()}, code {code}, {time.perf_counter() - t0:.0f} s.")
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(f"# Tool-world levels\n\n{header}\n\n{levels}\n\n{text}\n\n{NOTES}")


NOTES = """Expert: `envs.toolworld.PlannerExpert`, the gold plan played live (each call filled in from the
results of the calls before it), then "Done." or "Done. The answer is ...". Random:
`agent.policies.RandomPolicy` (a type-correct random call to an offered tool, or 1 in 4 a closing
message), at most 20 steps. Both through `agent.episode.run_episode`, as `lam collect` runs them.

Distinct tasks: different request or different initial state (the backends' generated contents)
among the first `--count` seeds of the split. Requests repeat more often in L3 because
"find the file with 'WORD' in its name" names only the word; the file it finds differs per world.

Splits (`envs/toolworld_tasks.py`): every generated name and value (file stems and names, folders,
contacts, user ids, symbols, prices, share counts, priorities, message texts, ticket titles, file
contents) is train or test by `split_of`, and each split draws only its own, so no test name or
value appears in any train task. Compositions of kinds (L2, L4, L5) whose crc32 is 0 mod 4 are
held out: train never draws them, so about a quarter of the composed test tasks combine kinds in
an order training never showed. Some pairings of a connector template ("Then", "After that,",
"Also,") with the backends it joins are test-only too (`glue_held_out`). The sentence template of
each single job is shared by both splits: a model trained from scratch learns the wording of the
jobs, and is tested on unseen names, values, compositions and connector pairings.
"""


if __name__ == "__main__":
    main()
