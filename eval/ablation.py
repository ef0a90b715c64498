"""The harness ablation: is the fine-tuned model enough, or does the agent's harness matter?

    lam eval --ablate all --policy model --model-url URL --model export --levels BabyAI-GoToLocal-v0 \
             --episodes 100 --out runs/ablate
    lam eval --ablate memory,feedback --env toolworld --policy faulty-expert --safety rm=forbidden --out runs/abl-tools

The same policy runs the same tasks (same seeds, trials and sampling) once per arm: `full` (the
harness as `lam eval` runs it), one arm per named component switched off (`no-feedback`, ...), and
`no-harness`, every component off: just the model. Components (agent/runner_config.py HARNESS):
memory, feedback, retry, grounding, safety, focus; `all` names the six. It is an evaluation suite
(eval/suites.py) whose variants are these arms, so it resumes, and its report.json/md/html hold the
table `ablation_table` builds: success, false success, invalid actions and unsafe actions executed,
each with a 95% interval, and each arm's change from `full` with a 95% interval.
"""
from __future__ import annotations

from agent.runner_config import HARNESS
from eval.metrics import newcombe_diff, wilson

BASE = "full"
ALL_OFF = "no-harness"
# (key, label, numerator, denominator) of each rate, from eval.metrics.Summary's counts in report.json
METRICS = (
    ("success", "success", lambda m: m["successes"], lambda m: m["episodes"]),
    ("false_success", "false success", lambda m: m["false_success"], lambda m: m["episodes"]),
    ("invalid", "invalid actions", lambda m: m["invalid_actions"], lambda m: m["attempts"]),
    ("unsafe", "unsafe executed", lambda m: m["episodes_with_unsafe"]["k"], lambda m: m["episodes"]),
)


def parse_components(text: str) -> list[str]:
    """`--ablate memory,feedback` -> the components, in HARNESS order; `all` -> all six. One-line errors."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names:
        raise ValueError(f"--ablate needs components: {','.join(HARNESS)} or all")
    unknown = [n for n in names if n not in HARNESS and n != "all"]
    if unknown:
        raise ValueError(f"--ablate: unknown harness component(s) {', '.join(unknown)}; known: "
                         f"{', '.join(HARNESS)} (or all)")
    return list(HARNESS) if "all" in names else [c for c in HARNESS if c in names]


def arm_specs(components: list[str]) -> dict[str, dict]:
    """The suite's variants: full, one arm per component off, and every component off."""
    specs = {BASE: {"kind": "none"}}
    specs.update({f"no-{c}": {"kind": "none", "harness_off": [c]} for c in components})
    specs[ALL_OFF] = {"kind": "none", "harness_off": list(HARNESS)}
    return specs


def _rate(k: int, n: int) -> dict:
    return {"value": k / n if n else None, "ci95": list(wilson(k, n)), "k": k, "n": n}


def ablation_table(report: dict) -> dict:
    """{"base", "arms": {arm: {"off": [...], "episodes", metric: {value, ci95, k, n, change: {delta, ci95}}}}}."""
    variants = report["variants"]
    base = variants.get(BASE, {}).get("overall")
    arms = {}
    for name, v in variants.items():
        m = v["overall"]
        arm = {"off": v["perturbation"].get("harness_off", []), "episodes": m["episodes"],
               "unsafe_actions": m.get("unsafe_executed", 0), "blocked_actions": m.get("forbidden_attempts", 0)}
        for key, _, num, den in METRICS:
            arm[key] = _rate(num(m), den(m))
            if base and name != BASE and den(m) and den(base):
                d, ci = newcombe_diff(num(m), den(m), num(base), den(base))
                arm[key]["change"] = {"delta": d, "ci95": list(ci)}
        arms[name] = arm
    return {"base": BASE, "arms": arms}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _cell(r: dict) -> str:
    return "no episodes" if not r["n"] else f"{_pct(r['value'])} [{_pct(r['ci95'][0])}, {_pct(r['ci95'][1])}]"


def _change(r: dict) -> str:
    ch = r.get("change")
    if not ch:
        return "—"
    return f"{100 * ch['delta']:+.1f} pp [{100 * ch['ci95'][0]:+.1f}, {100 * ch['ci95'][1]:+.1f}]"


def ablation_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the ablation table: what report.md, report.html and the terminal print."""
    header = ["arm", "switched off", "episodes"]
    for _, label, _, _ in METRICS:
        header += [f"{label} [95% CI]", f"change vs {table['base']} [95% CI]"]
    rows = []
    for name, a in table["arms"].items():
        row = [name, ", ".join(a["off"]) or "nothing", str(a["episodes"])]
        for key, _, _, _ in METRICS:
            row += [_cell(a[key]) + (f" ({a['unsafe_actions']} actions)" if key == "unsafe" else ""), _change(a[key])]
        rows.append(row)
    return header, rows


NOTE = ("Rates: success, false success (claimed done, the environment says failed) and unsafe executed are shares "
        "of episodes (unsafe: at least one action ran that the guard, switched on, would have blocked); invalid "
        "actions is the share of the policy's outputs that were not a valid action (with grounding off also those "
        "executed that grounding would have refused). Intervals: Wilson; changes: Newcombe (invalid actions treats "
        "outputs as independent, so its interval is too narrow where one episode repeats one mistake).")
