"""Replays and perturbed replays through the episode runner: does the environment's checker notice?

    python -m agent.replay --env bfcl --levels multi_turn_base --limit 50

For each task: run the expert, record what it did as a script, replay the script (it must pass
again), then replay perturbed copies (one tool call dropped; one argument changed) that the
environment's verdict must fail. Every perturbed replay still ends with a "done" claim, so each one
the checker fails is also counted as a false success (claimed done, verdict failed). Works for any
environment whose expert makes tool calls; text spaces only get the drop perturbation.
"""
from __future__ import annotations

import argparse
import copy
import json
import random

from agent.episode import Episode, RunnerConfig, run_episode
from agent.policies import ExpertPolicy, PolicyOutput, ScriptedPolicy, tool_call
from envs.base import Task

PERTURBATIONS = ("drop_call", "change_argument")


def record_script(ep: Episode) -> list:
    """What a policy did, replayable with ScriptedPolicy: per valid step, its tool calls
    (PolicyOutput) or its text (an action name, or a closing message)."""
    script = []
    for s in ep.steps:
        if not s.valid:
            continue
        if s.tool_calls:
            script.append(PolicyOutput(tool_calls=[tool_call(c["name"], c["arguments"]) for c in s.tool_calls]))
        else:
            script.append(s.action)
    return script


def recorded_output(step: dict):
    """One recorded step (a StepLog as a dict) as the output its policy gave: the grounded tool calls
    with their original ids (the conversation carries them), else the raw text. Invalid steps give
    their raw text, which grounds to the same rejection again. Session rebuilds (agent/session_rebuild.py)
    replay every step this way, valid or not, so step indices and conversation turns line up."""
    if step.get("valid") and step.get("tool_calls"):
        return PolicyOutput(tool_calls=[{"id": c.get("id") or "", "type": "function", "function": {
            "name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}} for c in step["tool_calls"]])
    return step.get("raw_output", "")


def _changed(value, rng: random.Random):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice([1, 2, 7])
    if isinstance(value, float):
        return round(value * 1.5 + 1.0, 2)
    if isinstance(value, str):
        return value + "_x" if value else "x"
    if isinstance(value, list):
        return value[:-1] if value else ["x"]
    if isinstance(value, dict):
        return {**value, "x": 1}
    return "x"


def perturb(script: list, kind: str, rng: random.Random) -> tuple[list, str] | None:
    """A copy of `script` with one call dropped or one argument changed, and what was done;
    None when the script has nothing to perturb that way."""
    calls = [(i, j) for i, item in enumerate(script) if isinstance(item, PolicyOutput) for j in range(len(item.tool_calls))]
    if kind == "drop_call":
        if calls:
            i, j = rng.choice(calls)
            out = copy.deepcopy(script)
            name = out[i].tool_calls[j]["function"]["name"]
            del out[i].tool_calls[j]
            if not out[i].tool_calls:
                del out[i]
            return out, f"dropped call {name} at step {i}"
        text = [i for i, item in enumerate(script) if isinstance(item, str) and item != "done"]
        if not text:
            return None
        i = rng.choice(text)
        return script[:i] + script[i + 1:], f"dropped action {script[i]!r} at step {i}"
    if kind == "change_argument":
        with_args = [(i, j) for i, j in calls if json.loads(script[i].tool_calls[j]["function"]["arguments"])]
        if not with_args:
            return None
        i, j = rng.choice(with_args)
        out = copy.deepcopy(script)
        fn = out[i].tool_calls[j]["function"]
        args = json.loads(fn["arguments"])
        key = rng.choice(sorted(args))
        old, args[key] = args[key], _changed(args[key], rng)
        fn["arguments"] = json.dumps(args)
        return out, f"{fn['name']}({key}={old!r} -> {args[key]!r}) at step {i}"
    raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(PERTURBATIONS)}")


def audit(env, tasks: list[Task], cfg: RunnerConfig, kinds=PERTURBATIONS, seed: int = 0) -> dict:
    """Expert, replay and perturbed replays of every task; counts plus the ids that broke the rule."""
    report = {"tasks": len(tasks), "expert_passed": 0, "replay_passed": 0, "replay_failed_ids": [],
              "perturbed": {k: {"runs": 0, "failed": 0, "false_success": 0, "passed": []} for k in kinds}}
    for task in tasks:
        ep = run_episode(env, ExpertPolicy(), task, cfg)
        report["expert_passed"] += ep.success
        script = record_script(ep)
        again = run_episode(env, ScriptedPolicy({task.task_id: script}), task, cfg)
        report["replay_passed"] += again.success
        if not again.success:
            report["replay_failed_ids"].append(task.task_id)
        for kind in kinds:
            rng = random.Random(f"{seed}/{kind}/{task.task_id}")
            changed = perturb(script, kind, rng)
            if changed is None:
                continue
            result = run_episode(env, ScriptedPolicy({task.task_id: changed[0]}), task, cfg)
            row = report["perturbed"][kind]
            row["runs"] += 1
            row["failed"] += not result.success
            row["false_success"] += result.false_success
            if result.success:
                row["passed"].append({"task_id": task.task_id, "change": changed[1]})
    return report


def add_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The audit's flags; `lam agent audit` and `python -m agent.replay` share them."""
    p.add_argument("--env", default="bfcl")
    p.add_argument("--levels", default=None, help="comma-separated; default: every level of the env")
    p.add_argument("--limit", type=int, default=20, help="tasks per level")
    p.add_argument("--max-steps", type=int, default=64)
    return p


def audit_from_args(a: argparse.Namespace) -> None:
    from envs.registry import get_env_spec, make_env

    levels = a.levels.split(",") if a.levels else list(get_env_spec(a.env).levels)
    tasks = [Task(a.env, lv, i, "all") for lv in levels for i in range(a.limit)]
    print(json.dumps(audit(make_env(a.env), tasks, RunnerConfig(max_steps=a.max_steps)), indent=1))


def main(argv: list[str] | None = None) -> None:
    audit_from_args(add_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv))


if __name__ == "__main__":
    main()
