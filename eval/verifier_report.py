"""`lam eval --verifier PATH`: the outcome verifier's score next to the environment's verdict.

    lam eval --policy prefix-expert --episodes 200 --out runs/ev-planted --verifier runs/verifier/best

Every evaluated episode is scored (OUT/verifier_scores.jsonl: episode, score, flagged, verdict, claim);
the report gains a `verifier` section: the false successes the environment's verdicts count (for a
planted suite, its planted rate), how many of them the verifier flagged (catch rate), how many real
successes it flagged (false alarms), its AUROC and status accuracy on these episodes.
"""
from __future__ import annotations

import json
from pathlib import Path

from agent.outcome_verifier import load_verifier
from data_collection.schema import SCHEMA_VERSION
from training.verifier_data import load_examples
from training.verifier_metrics import verifier_metrics


def verifier_section(episodes_dir: str | Path, verifier_path: str, out: Path, flag_rate: float = 0.1) -> dict:
    v = load_verifier(verifier_path, SCHEMA_VERSION)
    examples = load_examples([str(episodes_dir)])
    scores = v.score_messages([e.messages for e in examples])
    flagged = [e.claimed_done and s < v.threshold for e, s in zip(examples, scores)]
    with open(out / "verifier_scores.jsonl", "w") as f:
        for e, s, fl in zip(examples, scores, flagged):
            f.write(json.dumps({"episode_id": e.episode_id, "score": round(s, 4), "flagged": fl, "success": e.label,
                                "claimed_done": e.claimed_done, "false_success": e.false_success}) + "\n")
    claimed = sum(e.claimed_done for e in examples)
    fs = sum(e.false_success for e in examples)
    caught = sum(fl and e.false_success for e, fl in zip(examples, flagged))
    m = verifier_metrics(scores, examples, v.threshold, flag_rate)
    return {"model": v.name, "path": str(verifier_path), "threshold": round(v.threshold, 4), "episodes": len(examples),
            "claimed_done": claimed, "false_successes": fs,
            "false_success_rate": round(fs / claimed, 4) if claimed else None,  # of the claims, by the env's verdicts
            "flagged": sum(flagged), "caught": caught, "catch_rate": round(caught / fs, 4) if fs else None,
            "false_alarms": sum(fl and e.label for e, fl in zip(examples, flagged)),
            "auroc": m["auroc"], "status_accuracy": m["status_accuracy"]}


def markdown(section: dict) -> str:
    s = section
    rate = "—" if s["false_success_rate"] is None else f"{s['false_success_rate']:.1%}"
    catch = "—" if s["catch_rate"] is None else f"{s['catch_rate']:.1%}"
    auroc = "—" if s["auroc"] is None else f"{s['auroc']:.3f}"
    return "\n".join([
        "", f"## Outcome verifier `{s['model']}` (threshold {s['threshold']})", "",
        "| episodes | claimed done | false successes (env verdict) | false-success rate of claims | flagged | "
        "caught | catch rate | false alarms | AUROC | status accuracy |", "|---|---|---|---|---|---|---|---|---|---|",
        f"| {s['episodes']} | {s['claimed_done']} | {s['false_successes']} | {rate} | {s['flagged']} | {s['caught']} | "
        f"{catch} | {s['false_alarms']} | {auroc} | {s['status_accuracy']:.1%} |", ""])
