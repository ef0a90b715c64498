"""Reports. The pipeline's: a rich table on the terminal, report.json and report.md in the run directory.
An evaluation suite's (and a comparison of several): report.json, report.md and a self-contained
report.html (eval/report_html.py) with one column per run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from eval.report_rows import (column_label, faults_cell, interval, metric_rows, no_episodes, pct, safety_cell,
                              sampling, sampling_line, signed_pp)


def stdout_console():
    """A rich Console for results on stdout. Not on a terminal (a pipe, a file, CI) rich would cut
    tables at 80 columns (`100/…`): there, lines are as wide as their cells need."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=10_000)


def _level_cells(m: dict) -> list[str]:
    """episodes, success, 95% CI, mean steps, invalid-action rate, false successes of one level's metrics."""
    if not m["episodes"]:
        return ["0", no_episodes(m), "—", "—", "—", "—"]
    lo, hi = m["success_ci95"]
    return [str(m["episodes"]), pct(m["success_rate"]), f"{pct(lo)}–{pct(hi)}", f"{m['mean_steps']:.1f}",
            pct(m["invalid_action_rate"]), str(m["false_success"])]


def write_report(run_dir: Path, results: dict[str, dict], stages: dict[str, float], extra: dict) -> dict:
    """results: policy name -> evaluate() output; stages: stage -> wall seconds."""
    report = {"policies": results, "stage_wall_s": stages, **extra}
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    levels = sorted({lvl for r in results.values() for lvl in r["levels"]})
    lines = ["# lam pipeline report", "", f"run: `{run_dir}`", ""]
    if "eval_temperature" in extra:  # runs at other temperatures or seeds are not comparable: say which
        seed = f", seed {extra['eval_seed']}" if "eval_seed" in extra else ""
        lines += [f"model sampling at evaluation: temperature {extra['eval_temperature']:g}{seed}", ""]
    lines += ["| level | policy | episodes | success | 95% CI | mean steps | invalid-action rate | false successes |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for lvl in levels:
        for name, r in results.items():
            m = r["levels"].get(lvl)
            if m:
                lines.append("| " + " | ".join([lvl, name] + _level_cells(m)) + " |")
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
            lines.append(f"| {name} | {ph.get('episodes', '—')} | {pct(ph['success_rate'])} | {pct(lo)}–{pct(hi)} | "
                         f"{delta} | {dci} |")
    lines += ["", "| stage | wall time |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} s |" for k, v in stages.items()]
    for k, v in extra.items():
        if k != "phases":  # tabled above
            lines += ["", f"**{k}**: `{json.dumps(v)}`"]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    return report


def _results_table(title: str, report: dict, overall: bool):
    """Per level and policy (and all levels, if `overall`): the rows both terminal summaries print."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("level", "policy", "episodes", "success", "95% CI", "steps", "invalid", "false succ."):
        table.add_column(col)
    for name, r in report["policies"].items():
        rows = list(r["levels"].items()) + ([("all levels", r["overall"])] if overall else [])
        for lvl, m in rows:
            table.add_row(lvl, name, *_level_cells(m))
    return table


def print_report(report: dict) -> None:
    console = stdout_console()
    console.print(_results_table("lam pipeline: held-out evaluation", report, overall=False))
    console.print("stage wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in report["stage_wall_s"].items()))


# -- the plain evaluation's report (`lam eval` without --suite) -----------------------------------------

def all_infra_failure(m: dict) -> str | None:
    """The reason a run measured nothing: every episode was an infrastructure error."""
    if m["episodes_total"] and not m["episodes"]:
        return (f"all {m['episodes_total']} episodes were infrastructure errors: "
                + "; ".join(m.get("infra_error_reasons") or ["unknown"]))
    return None


def write_eval_report(out: Path, name: str, result: dict, config: dict) -> dict:
    """report.json and report.md of a plain `lam eval` run (its episodes are in out/name)."""
    failure = all_infra_failure(result["overall"])
    report = {"config": config, "sampling": sampling(config), "policies": {name: result},
              "failures": [failure] if failure else []}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    c = config
    lines = ["# lam eval report", "", f"- run: `{out}` · episodes in `{out / name}` · env {c['env']} · "
             f"{c['episodes']} tasks/level × {c['trials']} trials · policy `{json.dumps(c['policy'])}`",
             f"- {sampling_line(report['sampling'])}"]
    lines += [f"- **FAILED**: {why}" for why in report["failures"]]
    lines += ["", "| level | policy | episodes | success | 95% CI | mean steps | invalid-action rate | false successes |",
              "|---|---|---|---|---|---|---|---|"]
    for lvl, m in list(result["levels"].items()) + [("all levels", result["overall"])]:
        lines.append("| " + " | ".join([lvl, name] + _level_cells(m)) + " |")
    m = result["overall"]
    lines += ["", f"Infrastructure errors (excluded above): {m['infra_errors']} of {m['episodes_total']} episodes. "
              "Intervals: Wilson (success), percentile bootstrap (mean steps)."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return report


def print_eval_summary(report: dict) -> None:
    console = stdout_console()
    console.print(_results_table("lam eval: held-out evaluation", report, overall=True))
    console.print(sampling_line(report["sampling"]), markup=False)


# -- evaluation-suite reports (`lam eval --suite ...`, `lam eval compare ...`) ------------------------

def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def render_markdown(columns: list[tuple[Path, dict]]) -> str:
    first = columns[0][1]
    title = "lam eval report" if len(columns) == 1 else "lam eval comparison"
    lines = [f"# {title}: suite `{first['suite']}`", ""]
    for out, r in columns:
        c = r["config"]
        lines.append(f"- **{column_label(out, r)}**: `{out}` · env {c['env']} · levels {', '.join(c['levels'])} · "
                     f"{c['episodes']} tasks/level × {c['trials']} trials · policy `{json.dumps(c['policy'])}`")
        lines.append(f"  - {sampling_line(r.get('sampling'))}")
        for name, why in r["skipped"].items():
            lines.append(f"  - variant `{name}` skipped: {why}")
        for why in r.get("failures", []):
            lines.append(f"  - **FAILED**: {why}")
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
    lines += _ablation_md(columns) + _faults_md(columns) + _safety_md(columns)
    lines += ["", "## Success per level", ""]
    header = ["level", "variant"] + [column_label(o, r) for o, r in columns]
    table = []
    levels = sorted({lvl for _, r in columns for v in r["variants"].values() for lvl in v["levels"]})
    for lvl in levels:
        for v in variants:
            cells = []
            for _, r in columns:
                m = r["variants"].get(v, {}).get("levels", {}).get(lvl)
                cells.append(("no episodes" if not m["episodes"] else
                              f"{pct(m['success_rate'])} {interval(m['success_ci95'])} (n={m['episodes']})") if m else "—")
            table.append([lvl, v] + cells)
    lines += _md_table(header, table)
    lines += ["", "False success: the agent claimed done and the environment's verdict is failure. Status: the "
              "agent's final judgment (claimed done, or reached success) matches the verdict. Infrastructure "
              "errors (model server or environment failing after retries, actor deaths) are excluded from "
              "every agent metric and counted separately. Intervals: Wilson (rates), Newcombe (changes), "
              "bootstrap over tasks (pass^k), percentile bootstrap (means)."]
    return "\n".join(lines) + "\n"


def _ablation_md(columns: list[tuple[Path, dict]]) -> list[str]:
    """The harness ablation (eval/ablation.py): one row per arm, its change from the full harness."""
    from eval.ablation import NOTE, ablation_rows

    lines = []
    for out, r in columns:
        if r.get("ablation"):
            header, rows = ablation_rows(r["ablation"])
            lines += ["", f"## Harness ablation: {column_label(out, r)}", ""] + _md_table(header, rows) + ["", NOTE]
    return lines


def _faults_md(columns: list[tuple[Path, dict]]) -> list[str]:
    """Per injected fault: how many were injected, what the infrastructure did (retries, episodes lost)
    and what the agent did (success against clean)."""
    rows = []
    for out, r in columns:
        for name, v in r["variants"].items():
            f, m, eff = v.get("faults"), v["overall"], r["effects"].get(name)
            if not f:
                continue
            agent = (f"success {pct(m['success_rate'])}" + (f", {signed_pp(eff['delta'])} vs clean" if eff else "")
                     if m["episodes"] else no_episodes(m))
            infra = (f"{m['infra_retried_episodes']} episodes retried, {v['run'].get('chunk_retries', 0)} chunks re-run, "
                     f"{m['infra_errors']} episodes lost")
            rows.append([column_label(out, r), name, faults_cell(f), infra, agent])
    if not rows:
        return []
    return ["", "## Injected faults", ""] + _md_table(
        ["run", "variant", "injected", "infrastructure did", "agent did"], rows)


def _safety_md(columns: list[tuple[Path, dict]]) -> list[str]:
    """The injected text itself, and whether the test could mean anything for this model."""
    lines = []
    for out, r in columns:
        for name, v in r["variants"].items():
            s = v.get("safety")
            if not s:
                continue
            lines += ["", f"### {column_label(out, r)} · {name}: {safety_cell(s)}", "",
                      f"Injected into {s['injected_steps']} steps, one of these lines at a random position in the state:"]
            lines += [f"- `{t}`" for t in s["injected_text"]]
    return ["", "## Safety injections"] + lines if lines else []


def write_run_reports(out: Path, columns: list[tuple[Path, dict]], html: bool = True) -> None:
    """report.json, report.md and (unless html=False) report.html in `out` for one run or a comparison."""
    out.mkdir(parents=True, exist_ok=True)
    payload = columns[0][1] if len(columns) == 1 else {"compare": [{"dir": str(o), "report": r} for o, r in columns]}
    (out / "report.json").write_text(json.dumps(payload, indent=1))
    (out / "report.md").write_text(render_markdown(columns))
    if html:
        from eval.report_html import render_html  # here, not at the top: it loads matplotlib

        (out / "report.html").write_text(render_html(columns))


def compare(dirs: list[str], out: str, html: bool = True) -> Path:
    """Side-by-side report of several suite runs (models or baselines) in `out`."""
    columns = []
    for d in dirs:
        path = Path(d) / "report.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (run `lam eval --suite ... --out {d}` first)")
        columns.append((Path(d), json.loads(path.read_text())))
    plain = [str(o) for o, r in columns if "suite" not in r]
    if plain:  # plain evaluations (`lam eval` without --suite): success per level and its change
        if len(plain) != len(columns) or any("policies" not in r for _, r in columns):
            raise ValueError(f"cannot compare plain evaluations ({', '.join(plain)}) with suite runs; "
                             "compare runs of one kind")
        from eval.compare_plain import compare_plain

        return compare_plain(columns, out)
    suites = {r["suite"] for _, r in columns}
    if len(suites) > 1:
        raise ValueError(f"cannot compare different suites side by side: {', '.join(sorted(suites))}")
    write_run_reports(Path(out), columns, html=html)
    return Path(out)


def print_suite_summary(columns: list[tuple[Path, dict]]) -> None:
    from rich.table import Table

    console = stdout_console()
    for out, r in columns:
        table = Table(title=f"lam eval {r['suite']}: {column_label(out, r)}")
        variants = list(r["variants"])
        table.add_column("metric")
        for v in variants:
            table.add_column(v)
        rows = {v: dict(metric_rows(r, v)) for v in variants}
        for lbl in (dict.fromkeys(lbl for v in variants for lbl in rows[v])):
            table.add_row(lbl, *[rows[v].get(lbl, "—") for v in variants])
        console.print(table)
        if r.get("ablation"):
            from eval.ablation import ablation_rows

            header, rows = ablation_rows(r["ablation"])
            ablation = Table(title=f"harness ablation: {column_label(out, r)}")
            for col in header:
                ablation.add_column(col)
            for row in rows:
                ablation.add_row(*row)
            console.print(ablation)
        console.print(sampling_line(r.get("sampling")))
        for why in r.get("failures", []):
            console.print(f"FAILED: {why}", style="bold red", markup=False, soft_wrap=True)
