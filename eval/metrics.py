"""Episode-level metrics: success, its Wilson interval, steps, invalid actions, claims vs verdicts."""
from __future__ import annotations

import math
from collections import defaultdict


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    d = 1 + z * z / n
    c = p + z * z / (2 * n)
    r = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return ((c - r) / d, (c + r) / d)


def episode_summaries(records: list[dict]) -> list[dict]:
    """One dict per episode from trajectory records."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_id[r["episode_id"]].append(r)
    out = []
    for eid, rows in by_id.items():
        rows.sort(key=lambda r: r["step"])
        last = rows[-1]
        out.append(
            {
                "episode_id": eid,
                "level": last["level"],
                "seed": last["seed"],
                "success": bool(last["episode_success"]),
                "claimed_done": any(r["claimed_done"] for r in rows),
                "steps": len(rows),
                "attempts": sum(1 + r["retries"] for r in rows),
                "invalid": sum(r["retries"] + (0 if r["valid"] else 1) for r in rows),
                "end_reason": last["end_reason"],
                "latency_s": sum(r["latency_s"] for r in rows),
            }
        )
    return out


def summarize(episodes: list[dict]) -> dict:
    n = len(episodes)
    k = sum(e["success"] for e in episodes)
    attempts = sum(e["attempts"] for e in episodes)
    claimed = [e for e in episodes if e["claimed_done"]]
    lo, hi = wilson(k, n)
    return {
        "episodes": n,
        "success_rate": k / n if n else 0.0,
        "success_ci95": [lo, hi],
        "mean_steps": sum(e["steps"] for e in episodes) / n if n else 0.0,
        "invalid_action_rate": sum(e["invalid"] for e in episodes) / attempts if attempts else 0.0,
        "claimed_done": len(claimed),
        "false_success": sum(1 for e in claimed if not e["success"]),
        # status accuracy: the agent's claim (done or not) agrees with the environment's verdict
        "status_accuracy": sum(e["claimed_done"] == e["success"] for e in episodes) / n if n else 0.0,
        "errors": sum(e["end_reason"] in ("policy_error", "time_limit") for e in episodes),
    }


def per_level(episodes: list[dict]) -> dict[str, dict]:
    levels: dict[str, list[dict]] = defaultdict(list)
    for e in episodes:
        levels[e["level"]].append(e)
    return {lvl: summarize(eps) for lvl, eps in sorted(levels.items())}
