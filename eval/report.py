"""Reports. The pipeline's: a rich table on the terminal, report.json and report.md in the run directory.
An evaluation suite's (and a comparison of several): report.json, report.md and a self-contained
report.html (eval/report_html.py) with one column per run."""
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
    phases = extra.get("phases") or {}
    if phases:  # held-out success after each training phase, and what each phase changed
        lines += ["", "## Training phases (held-out success, all levels)", "",
                  "| phase | episodes | success | 95% CI | change vs previous phase | 95% CI of the change |",
                  "|---|---|---|---|---|---|"]
        for name, ph in phases.items():
            if "skipped" in ph:
                lines.append(f"| {name} | — | skipped: {ph['skipped']} | | | |")
                continue
            lo, hi = ph["success_ci95"]
            ch = ph.get("change_vs_previous")
            delta = f"{100 * ch['delta']:+.1f} pp (vs {ch['previous']})" if ch else "—"
            dci = f"{100 * ch['ci95'][0]:+.1f} to {100 * ch['ci95'][1]:+.1f} pp" if ch else "—"
            lines.append(f"| {name} | {ph.get('episodes', '—')} | {_pct(ph['success_rate'])} | {_pct(lo)}–{_pct(hi)} | "
                         f"{delta} | {dci} |")
    lines += ["", "| stage | wall time |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} s |" for k, v in stages.items()]
    for k, v in extra.items():
        if k != "phases":  # tabled above
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


# -- evaluation-suite reports (`lam eval --suite ...`, `lam eval compare ...`) ------------------------

def _ci(ci) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _signed_pct(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def metric_rows(report: dict, variant: str) -> list[tuple[str, str]]:
    """(label, value) rows describing one variant of one run: what every report table shows."""
    v = report["variants"][variant]
    m, pk, eff = v["overall"], v["pass_k"], report["effects"].get(variant)
    kmax = max((int(k) for k in pk), default=1)
    rows = [
        ("episodes (agent / infra errors)", f"{m['episodes']} / {m['infra_errors']}"),
        ("success [95% CI]", f"{_pct(m['success_rate'])} {_ci(m['success_ci95'])}"),
        ("change vs clean [95% CI]", f"{_signed_pct(eff['delta'])} [{_signed_pct(eff['ci95'][0])}, "
                                     f"{_signed_pct(eff['ci95'][1])}]" if eff else "—"),
        (f"pass^{kmax} [95% CI]", f"{_pct(pk[str(kmax)]['value'])} {_ci(pk[str(kmax)]['ci95'])}" if pk else "—"),
        ("progress (env-defined)", _pct(m["progress"])),
        ("false success / all episodes", f"{_pct(m['false_success_rate']['value'])} "
                                         f"{_ci(m['false_success_rate']['ci95'])} ({m['false_success']})"),
        ("false success / failures", f"{_pct(m['false_success_of_failures']['value'])} "
                                     f"{_ci(m['false_success_of_failures']['ci95'])} of {m['failures']}"
                                     if m["failures"] else "— (no failures)"),
        ("status accuracy [95% CI]", f"{_pct(m['status_accuracy'])} {_ci(m['status_ci95'])}"),
        ("invalid-action rate", f"{_pct(m['invalid_action_rate'])} {_ci(m['invalid_ci95'])}"),
        ("policy crashed (episodes, then no output)", str(m.get("policy_crashes", 0))),
        ("mean steps [95% CI]", f"{m['mean_steps']:.1f} [{m['steps_ci95'][0]:.1f}, {m['steps_ci95'][1]:.1f}]"),
        ("latency per step p50 / p95", f"{1000 * m['latency_p50_s']:.1f} / {1000 * m['latency_p95_s']:.1f} ms"),
        ("tokens per episode", f"{m['tokens_per_episode']:.0f}"),
    ]
    # safety rows: every report has them (so tables line up); "—" where the variant injects nothing
    f, b = m["injection_followed"], m["target_rate_clean_steps"]
    target = v["perturbation"].get("target")
    rows.append(("injection followed (steps) [95% CI]", f"{_pct(f['value'])} {_ci(f['ci95'])} of {f['n']}"
                 if target else "—"))
    rows.append(("same action without injection",
                 f"{_pct(b['value'])} {_ci(b['ci95'])} of {b['n']}" if target else "—"))
    rows.append(("forbidden actions attempted (blocked)", f"{m['forbidden_attempts']} in "
                                                          f"{m['episodes_with_forbidden']['k']} episodes"))
    run = v["run"]
    eps = f"{run['episodes_per_s']:.1f}" if run.get("episodes_per_s") else "—"
    rows.append(("infra: retried episodes / actor deaths", f"{m['infra_retried_episodes']} / {run['actor_deaths']}"))
    rows.append(("episodes/s (this machine)", eps))
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def column_label(out: Path, report: dict) -> str:
    pol = report["config"]["policy"]
    who = pol.get("model") if pol.get("kind") == "model" else pol.get("kind")
    return f"{out.name} ({who})"


def render_markdown(columns: list[tuple[Path, dict]]) -> str:
    first = columns[0][1]
    title = "lam eval report" if len(columns) == 1 else "lam eval comparison"
    lines = [f"# {title}: suite `{first['suite']}`", ""]
    for out, r in columns:
        c = r["config"]
        lines.append(f"- **{column_label(out, r)}**: `{out}` · env {c['env']} · levels {', '.join(c['levels'])} · "
                     f"{c['episodes']} tasks/level × {c['trials']} trials · policy `{json.dumps(c['policy'])}`")
        for name, why in r["skipped"].items():
            lines.append(f"  - variant `{name}` skipped: {why}")
    variants = list(dict.fromkeys(v for _, r in columns for v in r["variants"]))
    if len(columns) == 1:  # one run: a column per variant
        r = first
        rows = {v: dict(metric_rows(r, v)) for v in variants}
        labels = list(dict.fromkeys(lbl for v in variants for lbl in rows[v]))
        lines += ["", "## Summary", ""]
        lines += _md_table(["metric"] + variants, [[lbl] + [rows[v].get(lbl, "—") for v in variants] for lbl in labels])
    else:  # a comparison: per variant, a column per run
        for v in variants:
            have = [(o, r) for o, r in columns if v in r["variants"]]
            rows = [dict(metric_rows(r, v)) for _, r in have]
            labels = list(dict.fromkeys(lbl for row in rows for lbl in row))
            lines += ["", f"## {v}", ""]
            lines += _md_table(["metric"] + [column_label(o, r) for o, r in have],
                               [[lbl] + [row.get(lbl, "—") for row in rows] for lbl in labels])
    lines += ["", "## Success per level", ""]
    header = ["level", "variant"] + [column_label(o, r) for o, r in columns]
    table = []
    levels = sorted({lvl for _, r in columns for v in r["variants"].values() for lvl in v["levels"]})
    for lvl in levels:
        for v in variants:
            cells = []
            for _, r in columns:
                m = r["variants"].get(v, {}).get("levels", {}).get(lvl)
                cells.append(f"{_pct(m['success_rate'])} {_ci(m['success_ci95'])} (n={m['episodes']})" if m else "—")
            table.append([lvl, v] + cells)
    lines += _md_table(header, table)
    lines += ["", "False success: the agent claimed done and the environment's verdict is failure. Status: the "
              "agent's final judgment (claimed done, or reached success) matches the verdict. Infrastructure "
              "errors (model server or environment failing after retries, actor deaths) are excluded from "
              "every agent metric and counted separately. Intervals: Wilson (rates), Newcombe (changes), "
              "bootstrap over tasks (pass^k), normal (means)."]
    return "\n".join(lines) + "\n"


def write_run_reports(out: Path, columns: list[tuple[Path, dict]], html: bool = True) -> None:
    """report.json, report.md and (unless html=False) report.html in `out` for one run or a comparison."""
    out.mkdir(parents=True, exist_ok=True)
    payload = columns[0][1] if len(columns) == 1 else {"compare": [{"dir": str(o), "report": r} for o, r in columns]}
    (out / "report.json").write_text(json.dumps(payload, indent=1))
    (out / "report.md").write_text(render_markdown(columns))
    if html:
        from eval.report_html import render_html

        (out / "report.html").write_text(render_html(columns))


def compare(dirs: list[str], out: str, html: bool = True) -> Path:
    """Side-by-side report of several suite runs (models or baselines) in `out`."""
    columns = []
    for d in dirs:
        path = Path(d) / "report.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (run `lam eval --suite ... --out {d}` first)")
        columns.append((Path(d), json.loads(path.read_text())))
    suites = {r["suite"] for _, r in columns}
    if len(suites) > 1:
        raise ValueError(f"cannot compare different suites side by side: {', '.join(sorted(suites))}")
    write_run_reports(Path(out), columns, html=html)
    return Path(out)


def print_suite_summary(columns: list[tuple[Path, dict]]) -> None:
    from rich.console import Console
    from rich.table import Table

    for out, r in columns:
        table = Table(title=f"lam eval {r['suite']}: {column_label(out, r)}")
        variants = list(r["variants"])
        table.add_column("metric")
        for v in variants:
            table.add_column(v)
        rows = {v: dict(metric_rows(r, v)) for v in variants}
        for lbl in (dict.fromkeys(lbl for v in variants for lbl in rows[v])):
            table.add_row(lbl, *[rows[v].get(lbl, "—") for v in variants])
        Console().print(table)
