"""The policies collection runs, behind the agent's one `Policy` interface:

    {"kind": "expert"}                     the environment's expert (BabyAI bot, BFCL gold calls)
    {"kind": "gold", "path": DIR|FILE}     replay of recorded action sequences (agent ScriptedPolicy):
                                           a lam dataset's train/ episodes, or JSONL lines
                                           {"task_id": "BabyAI-GoToLocal-v0/12", "actions": [...]}
    {"kind": "model", "base_url": URL, "model": NAME, "temperature": 0.0}
                                           any OpenAI-compatible endpoint (a teacher, or the model
                                           being trained: the self-improvement path)
    {"kind": "takeover", "base_url": URL, "model": NAME, "temperature": 1.0, "max_prefix": 40}
                                           the model for a random prefix, then the expert from where it
                                           left off (DAgger data: agent/policies.py TakeoverPolicy)
    {"kind": "random", "seed": 0}          the floor

All of them run through agent.episode.run_episode, so the recorded states are exactly what an agent sees,
and are built by the one policy factory (agent/policy_factory.py); collection only adds gold replay
(a scripted policy from recorded actions) and its crash handling (on_crash="raise" for the expert).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from agent.policies import SERVED_KINDS, ModelEndpointError  # noqa: F401  (SERVED_KINDS re-exported)
from agent.policies import check_model_endpoint as _check
from agent.policy_factory import PolicySpec, build_policy

POLICY_KINDS = ("expert", "gold", "model", "random", "takeover")


def load_gold(path: str | Path) -> dict[str, list[str]]:
    """task_id -> actions, from a lam dataset directory (its train/ shards, any schema version:
    only task_id, step and action are read) or a JSONL file."""
    path = Path(path)
    if path.is_dir():
        import pyarrow.parquet as pq

        from data_collection.schema import table_rows

        files = sorted((path / "train").glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no train/*.parquet in {path}: not a lam dataset to replay")
        steps: dict[str, list[tuple[int, str]]] = {}
        for f in files:
            for r in table_rows(pq.read_table(f, columns=["task_id", "step", "action"])):
                steps.setdefault(r.task_id, []).append((r.step, r.action))
        return {tid: [a for _, a in sorted(v)] for tid, v in steps.items()}
    if not path.exists():
        raise FileNotFoundError(f"gold file {path} does not exist")
    gold = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                gold[row["task_id"]] = list(row["actions"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: expected {{\"task_id\": ..., \"actions\": [...]}} ({e})") from e
    return gold


def collect_policy_spec(spec: dict) -> PolicySpec:
    """A collection policy dict as the one factory's typed spec: gold becomes a scripted replay."""
    kind = spec.get("kind", "expert")
    if kind == "gold":
        if not spec.get("path"):
            raise ValueError("policy gold needs a path (--gold DIR_OR_JSONL)")
        return PolicySpec(kind="scripted", script=load_gold(spec["path"]))
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy kind {kind!r}: expected {', '.join(POLICY_KINDS)}")
    return PolicySpec.from_dict(spec)


def build_collect_policy(spec: dict):
    """An expert's crash is a labelled policy_error failure, never a dead collector."""
    crashes = spec.get("kind", "expert") in ("expert", "takeover")  # the bot raises on some states
    return build_policy(collect_policy_spec(spec), on_crash="raise" if crashes else None)


def check_model_endpoint(spec: dict) -> None:
    """Before any task runs: a model policy's server answers GET /models and serves spec["model"].
    Otherwise every episode would spend its retries on a dead URL, 20 N + 1000 times over.
    ConnectionError (unreachable, refused key, not an OpenAI server) or ValueError (model not served)."""
    if spec.get("kind") not in SERVED_KINDS:
        return
    key = spec.get("api_key") or os.environ.get("LAM_API_KEY")  # as the policy itself resolves it
    try:
        _check({**spec, "api_key": key}, timeout_s=10.0, url_flag="--model-url", key_flag="--api-key",
               model_flag="--model")
    except ModelEndpointError as e:
        raise (ValueError if e.code == "unknown_model" else ConnectionError)(str(e)) from None


def policy_model(spec: dict, expert_version: str) -> str:
    """What goes into the `model` column: which model or program, and its version."""
    kind = spec.get("kind", "expert")
    if kind == "expert":
        return expert_version or "expert"
    if kind == "model":
        return f"{spec['model']} @ {spec['base_url']} (T={spec.get('temperature', 0.0)})"
    if kind == "takeover":
        return (f"{spec['model']} @ {spec['base_url']} (T={spec.get('temperature', 0.0)}) for up to "
                f"{spec.get('max_prefix', 12)} steps, then {expert_version or 'the expert'}")
    if kind == "gold":
        return f"gold replay of {spec['path']}"
    return f"random (seed {spec.get('seed', 0)})"
