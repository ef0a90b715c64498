"""How an outcome verifier does on the hard tool-world case: one call short of a two-request task.

    python bench/verifier_partials.py VERIFIER_DIR [--tasks 40]

For unseen L2 test tasks whose expert solution takes two or more calls, runs the expert (correct) and a
session that makes the expert's first call then replies "Done." (partial, a false success), through the
one episode runner, and scores both with the verifier exactly as `lam agent serve --verifier` does. Prints
how many partials it flags, how many correct sessions it flags, and on how many tasks the partial scores
below the correct session (the ordering, which does not depend on the threshold).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("verifier", help="a lam train-verifier checkpoint (OUT/best)")
    p.add_argument("--tasks", type=int, default=40)
    p.add_argument("--first-seed", type=int, default=900)
    a = p.parse_args()
    from agent.episode import RunnerConfig, run_episode
    from agent.outcome_verifier import load_verifier, steps_of_episode
    from agent.policies import ExpertPolicy
    from agent.policy_factory import build_policy
    from envs.base import Task
    from envs.registry import make_env

    v, env, rows = load_verifier(a.verifier), make_env("toolworld"), []
    for seed in range(a.first_seed, a.first_seed + 20 * a.tasks):
        task = Task("toolworld", "L2", seed, "test")
        good = run_episode(env, ExpertPolicy(), task, RunnerConfig(max_steps=8))
        calls = [s.action for s in good.steps if s.tool_calls]
        if not (good.success and len(calls) >= 2):
            continue
        bad = run_episode(env, build_policy({"kind": "scripted", "script": {task.task_id: calls[:1] + ["Done."]}}),
                          task, RunnerConfig(max_steps=8))
        g, b = (v.verify(steps_of_episode(e), e.claimed_done, e.final_state) for e in (good, bad))
        rows.append({"seed": seed, "correct": g, "partial": b})
        if len(rows) == a.tasks:
            break
    n = len(rows)
    print(json.dumps({"verifier": a.verifier, "threshold": v.threshold, "tasks": n,
                      "partials_flagged": sum(r["partial"]["flagged"] for r in rows),
                      "correct_flagged": sum(r["correct"]["flagged"] for r in rows),
                      "partial_below_correct": sum(r["partial"]["score"] < r["correct"]["score"] for r in rows),
                      "missed_seeds": [r["seed"] for r in rows if not r["partial"]["flagged"]]}))


if __name__ == "__main__":
    main()
