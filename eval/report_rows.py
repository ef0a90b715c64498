"""The words and numbers every report shows, in one place: the markdown report (eval/report.py),
the HTML report (eval/report_html.py) and the terminal tables all print these cells, so the three
cannot disagree. Plain functions of the report dicts, no I/O."""
from __future__ import annotations

from pathlib import Path


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def sampling(config: dict) -> dict:
    """How the policy chose its actions: every report states it, since runs at different temperatures
    (or seeds) are not comparable. Temperature only applies to a model policy."""
    pol = config.get("policy", {})
    temp = pol.get("temperature") if pol.get("kind") == "model" else None
    return {"policy": pol.get("kind", "?"), "temperature": temp, "seed": pol.get("seed", 0),
            "task_base_seed": config.get("base_seed", 0)}


def interval(ci) -> str:
    return f"[{pct(ci[0])}, {pct(ci[1])}]"


def signed_pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def sampling_line(s: dict | None) -> str:
    """The policy's sampling settings in words, for every report's header."""
    if not s:
        return "sampling: not recorded (report written before temperatures were stated)"
    has_temp = s.get("temperature") is not None
    temp = f"temperature {s['temperature']:g}" if has_temp else f"{s['policy']} policy (no temperature)"
    return f"sampling: {temp}, policy seed {s.get('seed', 0)}, task seeds from {s.get('task_base_seed', 0)}"


def no_episodes(m: dict) -> str:
    """What a rate over zero agent episodes is: nothing, not 0.0% [0.0%, 0.0%]."""
    return f"no episodes ({m['infra_errors']} infrastructure errors)" if m.get("infra_errors") else "no episodes"


def faults_cell(f: dict | None) -> str:
    if not f:
        return "—"
    count = "unknown" if f["injected"] is None else str(f["injected"])
    bad = " — NOT INJECTED" if f["expected"] and f["injected"] == 0 and f["complete"] else ""
    return f"{count} {f['what']} ({f['detail']}){bad}"


def safety_cell(s: dict | None) -> str:
    if not s:
        return "—"
    if s["vacuous"]:
        return f"VACUOUS: {s['why']}"
    return f"meaningful: `{s['target']}` emitted in {s['emitted']} of {s['steps']} steps"


def planted_cell(p: dict | None) -> str:
    """Planted false claims against the false successes the verdicts found (eval/suites.py _planted)."""
    if not p:
        return "—"
    verdict = "recovered exactly" if p["recovered"] else "NOT RECOVERED"
    rate = p["planted"] / p["episodes"] if p["episodes"] else 0.0
    return (f"{p['planted']} of {p['episodes']} ({pct(rate)}, {p['fault']} at rate {p['rate']:g}); "
            f"false successes {p['false_success']}: {verdict}")


def metric_rows(report: dict, variant: str) -> list[tuple[str, str]]:
    """(label, value) rows describing one variant of one run: what every report table shows."""
    v = report["variants"][variant]
    m, pk, eff = v["overall"], v["pass_k"], report["effects"].get(variant)
    kmax = max((int(k) for k in pk), default=1)
    rows = [
        ("episodes (agent / infra errors)", f"{m['episodes']} / {m['infra_errors']}"),
        ("success [95% CI]", f"{pct(m['success_rate'])} {interval(m['success_ci95'])}"),
        ("change vs clean [95% CI]", f"{signed_pp(eff['delta'])} [{signed_pp(eff['ci95'][0])}, "
                                     f"{signed_pp(eff['ci95'][1])}]" if eff and eff.get("delta") is not None
                                     else "—"),
        (f"pass^{kmax} [95% CI]", f"{pct(pk[str(kmax)]['value'])} {interval(pk[str(kmax)]['ci95'])}" if pk else "—"),
        ("progress (env-defined)", pct(m["progress"])),
        ("false success / all episodes", f"{pct(m['false_success_rate']['value'])} "
                                         f"{interval(m['false_success_rate']['ci95'])} ({m['false_success']})"),
        ("false success / failures", f"{pct(m['false_success_of_failures']['value'])} "
                                     f"{interval(m['false_success_of_failures']['ci95'])} of {m['failures']}"
                                     if m["failures"] else "— (no failures)"),
        ("status accuracy [95% CI]", f"{pct(m['status_accuracy'])} {interval(m['status_ci95'])}"),
        ("invalid-action rate", f"{pct(m['invalid_action_rate'])} {interval(m['invalid_ci95'])}"),
        ("policy crashed (episodes, then no output)", str(m.get("policy_crashes", 0))),
        ("mean steps [95% CI]", f"{m['mean_steps']:.1f} [{m['steps_ci95'][0]:.1f}, {m['steps_ci95'][1]:.1f}]"),
        ("latency per step p50 / p95", f"{1000 * m['latency_p50_s']:.1f} / {1000 * m['latency_p95_s']:.1f} ms"),
        ("tokens per episode", f"{m['tokens_per_episode']:.0f}"),
    ]
    # safety rows: every report has them (so tables line up); "—" where the variant injects nothing
    f, b = m["injection_followed"], m["target_rate_clean_steps"]
    target = v["perturbation"].get("target")
    rows.append(("injection followed (steps) [95% CI]", f"{pct(f['value'])} {interval(f['ci95'])} of {f['n']}"
                 if target else "—"))
    rows.append(("same action without injection",
                 f"{pct(b['value'])} {interval(b['ci95'])} of {b['n']}" if target else "—"))
    rows.append(("forbidden actions attempted (blocked)", f"{m['forbidden_attempts']} in "
                                                          f"{m['episodes_with_forbidden']['k']} episodes"))
    rows.append(("unsafe actions executed (guard off)", f"{m.get('unsafe_executed', 0)} in "
                 f"{m.get('episodes_with_unsafe', {}).get('k', 0)} episodes"))
    rows.append(("planted false claims", planted_cell(v.get("planted"))))
    rows.append(("safety test", safety_cell(v.get("safety"))))
    rows.append(("faults injected", faults_cell(v.get("faults"))))
    run = v["run"]
    eps = f"{run['episodes_per_s']:.1f}" if run.get("episodes_per_s") else "—"
    rows.append(("infra: retried episodes / actor deaths", f"{m['infra_retried_episodes']} / {run['actor_deaths']}"))
    rows.append(("episodes/s (this machine)", eps))
    if not m["episodes"]:  # every agent metric is undefined: say so instead of printing 0.0% [0.0%, 0.0%]
        keep = ("episodes (agent", "faults injected", "safety test", "infra:", "episodes/s")
        rows = [(lbl, no_episodes(m) if lbl.startswith("success") else val if lbl.startswith(keep) else "—")
                for lbl, val in rows]
    return rows


def column_label(out: Path, report: dict) -> str:
    pol = report["config"]["policy"]
    who = pol.get("model") if pol.get("kind") == "model" else pol.get("kind")
    return f"{out.name} ({who})"
