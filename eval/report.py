"""The pipeline report: a rich table on the terminal, report.json and report.md in the run directory."""
from __future__ import annotations

import json
from pathlib import Path


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_report(run_dir: Path, results: dict[str, dict], stages: dict[str, float], extra: dict) -> dict:
    """results: policy name -> evaluate() output; stages: stage -> wall seconds."""
    report = {"policies": results, "stage_wall_s": stages, **extra}
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    levels = sorted({lvl for r in results.values() for lvl in r["levels"]})
    lines = ["# lam pipeline report", "", f"run: `{run_dir}`", ""]
    lines += ["| level | policy | episodes | success | 95% CI | mean steps | invalid-action rate | false successes |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for lvl in levels:
        for name, r in results.items():
            m = r["levels"].get(lvl)
            if m:
                lo, hi = m["success_ci95"]
                lines.append(
                    f"| {lvl} | {name} | {m['episodes']} | {_pct(m['success_rate'])} | {_pct(lo)}–{_pct(hi)} | "
                    f"{m['mean_steps']:.1f} | {_pct(m['invalid_action_rate'])} | {m['false_success']} |"
                )
    lines += ["", "| stage | wall time |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} s |" for k, v in stages.items()]
    for k, v in extra.items():
        lines += ["", f"**{k}**: `{json.dumps(v)}`"]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    return report


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lam pipeline: held-out evaluation")
    for col in ("level", "policy", "episodes", "success", "95% CI", "steps", "invalid", "false succ."):
        table.add_column(col)
    for name, r in report["policies"].items():
        for lvl, m in r["levels"].items():
            lo, hi = m["success_ci95"]
            table.add_row(lvl, name, str(m["episodes"]), _pct(m["success_rate"]), f"{_pct(lo)}–{_pct(hi)}",
                          f"{m['mean_steps']:.1f}", _pct(m["invalid_action_rate"]), str(m["false_success"]))
    console = Console()
    console.print(table)
    console.print("stage wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in report["stage_wall_s"].items()))
