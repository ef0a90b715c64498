"""DPO pairs by an outcome verifier's score, for data no environment gave a verdict (LAM4's reward model).

    lam dpo --data runs/deployed --model runs/train/export --out runs/dpo verifier=runs/verifier/best [verifier_margin=0.5]

`training/dpo.py` pairs a verified success with a failure of the same task. Episodes from deployment
(agent sessions, a world without a checker) carry no verdict; with `verifier=PATH` every episode is
scored by the verifier instead, and within each task the highest-scoring episode is paired, as chosen,
with each episode scoring at least `verifier_margin` lower, as rejected. The stored verdict is not read.
"""
from __future__ import annotations

import random

from data_collection.schema import SCHEMA_VERSION, StepRow, group_steps


def score_episodes(episodes: list[list[StepRow]], verifier_path: str) -> list[float]:
    from agent.outcome_verifier import load_verifier
    from training.verifier_data import FinalStates, episode_transcript

    v, final_states = load_verifier(verifier_path, SCHEMA_VERSION), FinalStates(check=False)  # no verdict to check against
    return v.score_messages([episode_transcript(ep, final_states) for ep in episodes])


def verifier_pairs(rows: list[StepRow], verifier_path: str, max_pairs: int, seed: int,
                   margin: float = 0.5) -> list[tuple[list[StepRow], list[StepRow]]]:
    """(chosen, rejected) episode pairs of the same task ordered by the verifier's score (see the module doc)."""
    episodes = [ep for ep in group_steps(rows) if ep and ep[0].step >= 0]
    scores = score_episodes(episodes, verifier_path)
    by_task: dict[str, list[tuple[float, int]]] = {}
    for i, (ep, s) in enumerate(zip(episodes, scores)):
        by_task.setdefault(ep[0].task_id, []).append((s, i))
    pairs = []
    for tid in sorted(by_task):
        ranked = sorted(by_task[tid], reverse=True)
        top, top_i = ranked[0]
        pairs += [(episodes[top_i], episodes[i]) for s, i in ranked[1:] if top - s >= margin]
    random.Random(seed).shuffle(pairs)
    return pairs[:max_pairs]
