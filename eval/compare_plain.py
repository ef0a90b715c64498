"""`lam eval compare` for plain evaluations: did the new model do better on the same held-out tasks?

    lam eval compare runs/eval-before runs/eval-after --out runs/before-vs-after

One column per (run, policy); per level and overall: success k/n with its Wilson 95% interval, and the change
against the first column with its Newcombe 95% interval. Runs on different tasks (level list, episodes or task
seeds differ) are compared all the same, and the report says so: their difference mixes task and model effects.
"""
from __future__ import annotations

import json
from pathlib import Path

from eval.metrics import newcombe_diff, wilson


def _columns(runs: list[tuple[Path, dict]]) -> list[tuple[str, dict]]:
    return [(f"{d.name}/{name}", pol) for d, r in runs for name, pol in r["policies"].items()]


def _tasks(r: dict) -> tuple:
    c = r.get("config", {})
    return tuple(c.get("levels", [])), c.get("episodes"), c.get("base_seed"), c.get("trials", 1)


def compare_plain(runs: list[tuple[Path, dict]], out: str | Path) -> Path:
    cols = _columns(runs)
    levels = sorted({lvl for _, p in cols for lvl in p.get("levels", {})})
    rows = []
    for lvl in levels + ["all levels"]:
        cells = []
        for _, p in cols:
            m = p["overall"] if lvl == "all levels" else p.get("levels", {}).get(lvl)
            cells.append(None if m is None else (m["successes"], m["episodes"]))
        rows.append((lvl, cells))
    same = len({_tasks(r) for _, r in runs}) == 1
    head = ["level"] + [name for name, _ in cols] + [f"{name} vs {cols[0][0]}" for name, _ in cols[1:]]
    lines = ["# lam eval compare", "", ("Same held-out tasks in every run." if same else
             "**The runs are on different tasks** (levels, episodes or task seeds differ): a change mixes task and model."),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table = []
    for lvl, cells in rows:
        shown, changes = [], []
        for c in cells:
            if c is None or not c[1]:
                shown.append("—")
                continue
            lo, hi = wilson(c[0], c[1])
            shown.append(f"{100 * c[0] / c[1]:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({c[0]}/{c[1]})")
        base = cells[0]
        for c in cells[1:]:
            if c is None or base is None or not c[1] or not base[1]:
                changes.append(None)
                continue
            d, (lo, hi) = newcombe_diff(c[0], c[1], base[0], base[1])
            changes.append({"delta": d, "ci95": [lo, hi]})
        lines.append("| " + " | ".join([lvl, *shown, *("—" if x is None else f"{100 * x['delta']:+.1f} pp "
                                                        f"[{100 * x['ci95'][0]:+.1f}, {100 * x['ci95'][1]:+.1f}]" for x in changes)]) + " |")
        table.append({"level": lvl, "success": [None if c is None else {"successes": c[0], "episodes": c[1]} for c in cells],
                      "change_vs_first": changes})
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    (o / "report.json").write_text(json.dumps({"compare": [name for name, _ in cols], "same_tasks": same,
                                               "dirs": [str(d) for d, _ in runs], "table": table}, indent=1))
    (o / "report.md").write_text("\n".join(lines) + "\n")
    return o
