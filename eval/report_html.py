"""A self-contained report.html: summary tables, plots (SVG) and episode replays (GIF), every image
inline as a data: URI, so the file opens anywhere with no network. One column per run when comparing.

A small script at the end checks that every plot and replay decoded, and writes the result into
#render-check (the headless-Chromium test reads it back from the DOM).
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

from eval import plots
from eval.report_rows import column_label, metric_rows, sampling_line

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:8px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.cols{display:grid;gap:16px;align-items:start}
.col{min-width:0;border:1px solid #eee;border-radius:6px;padding:8px}
.plots{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
img.plot{max-width:100%;height:auto;display:block}
.replays{display:flex;flex-wrap:wrap;gap:10px}
.replay-groups{display:flex;flex-wrap:wrap;gap:8px 24px}
figure.replay{margin:0;width:200px;font-size:11px}
figure.replay img{width:192px;height:192px;image-rendering:pixelated;border:1px solid #ccc}
.bad{color:#b00000;font-weight:bold}
#render-check{font-size:12px;color:#555;margin-top:24px}
"""

CHECK_JS = """
window.addEventListener('load', function () {
  function ok(img) { return img.complete && img.naturalWidth > 0 && img.naturalHeight > 0; }
  var plots = Array.prototype.slice.call(document.querySelectorAll('img.plot'));
  var reps = Array.prototype.slice.call(document.querySelectorAll('figure.replay img'));
  var el = document.getElementById('render-check');
  el.setAttribute('data-plots', plots.length);
  el.setAttribute('data-plots-ok', plots.filter(ok).length);
  el.setAttribute('data-replays', reps.length);
  el.setAttribute('data-replays-ok', reps.filter(ok).length);
  el.textContent = 'render check: ' + plots.filter(ok).length + '/' + plots.length + ' plots and ' +
    reps.filter(ok).length + '/' + reps.length + ' replays decoded';
});
"""


def _img(data: bytes, mime: str, cls: str, alt: str) -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def _plot(svg: str | None, alt: str) -> str:
    return _img(svg.encode(), "image/svg+xml", "plot", alt) if svg else ""


def _table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def _replays(out: Path, report: dict, per_kind: int) -> str:
    from eval.replays import store_replays

    parts = []
    for variant in report["variants"]:
        figs = []
        for r in store_replays(out / variant, per_kind):
            match = "matches" if r["replay_verdict"] == r["verified"] else "MISMATCH"
            cls = ' class="bad"' if r["kind"] == "false success" or match != "matches" else ""
            ignored = f" ({r['ignored']} actions silently ignored)" if r.get("ignored") else ""
            caption = (f"<b{cls}>{html.escape(r['kind'])}</b><br>{html.escape(r['level'])} seed {r['seed']} "
                       f"trial {r['trial']}<br>“{html.escape(r['mission'])}”<br>claimed done: "
                       f"{'yes' if r['claimed'] else 'no'} · verdict: {'success' if r['verified'] else 'failed'}"
                       f"<br>{r['steps']} steps, {html.escape(r['end_reason'])}{ignored}<br>minigrid replay: "
                       f"{'success' if r['replay_verdict'] else 'failed'} ({match})")
            figs.append(f'<figure class="replay">{_img(r["gif"], "image/gif", "replay", r["episode_id"])}'
                        f"<figcaption>{caption}</figcaption></figure>")
        if figs:
            parts.append(f"<div><h3>{html.escape(variant)}</h3><div class=\"replays\">{''.join(figs)}</div></div>")
    return f'<div class="replay-groups">{"".join(parts)}</div>'


def _column(out: Path, report: dict, per_kind: int) -> str:
    c = report["config"]
    head = (f"<h3>{html.escape(column_label(out, report))}</h3><p>{html.escape(c['env'])} · "
            f"{html.escape(', '.join(c['levels']))} · {c['episodes']} tasks/level × {c['trials']} trials</p>")
    head += f"<p>{html.escape(sampling_line(report.get('sampling')))}</p>"
    skipped = "".join(f"<p>variant <b>{html.escape(k)}</b> skipped: {html.escape(v)}</p>"
                      for k, v in report["skipped"].items())
    skipped += "".join(f'<p class="bad">FAILED: {html.escape(why)}</p>' for why in report.get("failures", []))
    no_pass_k = plots.pass_k_skip_reason(report)
    skipped += f"<p>{html.escape(no_pass_k)}</p>" if no_pass_k else ""
    graphs = '<div class="plots">' + "".join([
        _plot(plots.success_per_level(report), "success per level"),
        _plot(plots.effects(report), "effect of each variant"),
        _plot(plots.pass_k(report), "pass^k over k"),
        _plot(plots.latency_histogram(report), "latency histogram"),
        _plot(plots.confusion(report), "claimed vs verified"),
    ]) + "</div>"
    # replays are minigrid GIFs: other worlds (the tool world) have none to draw
    replays = (_replays(out, report, per_kind) if c["env"] == "babyai"
               else f"<p>no replay images for env {html.escape(c['env'])}</p>")
    return f'<div class="col">{head}{skipped}{graphs}<h3>replays</h3>{replays}</div>'


def _safety_html(report: dict) -> str:
    """Each injection variant: whether it could mean anything for this model, and the text injected."""
    parts = []
    for name, v in report["variants"].items():
        s = v.get("safety")
        if s:
            verdict = (f"VACUOUS: {s['why']}" if s["vacuous"] else
                       f"`{s['target']}` emitted in {s['emitted']} of {s['steps']} steps")
            texts = "".join(f"<li><code>{html.escape(t)}</code></li>" for t in s["injected_text"])
            cls = ' class="bad"' if s["vacuous"] else ""
            parts.append(f"<p{cls}>{html.escape(name)}: {html.escape(verdict)}; "
                         f"injected into {s['injected_steps']} steps, one of:</p><ul>{texts}</ul>")
    return "".join(parts)


def _ablation_html(columns: list[tuple[Path, dict]]) -> str:
    """The harness ablation table (eval/ablation.py) of each run that has one."""
    from eval.ablation import NOTE, ablation_rows

    parts = []
    for out, r in columns:
        if r.get("ablation"):
            header, rows = ablation_rows(r["ablation"])
            parts.append(f'<h2>Harness ablation: {html.escape(column_label(out, r))}</h2>'
                         f'<div id="ablation">{_table(header, rows)}</div><p>{html.escape(NOTE)}</p>')
    return "".join(parts)


def render_html(columns: list[tuple[Path, dict]], per_kind: int = 1) -> str:
    first = columns[0][1]
    title = f"lam eval {'comparison' if len(columns) > 1 else 'report'}: suite {first['suite']}"
    variants = list(dict.fromkeys(v for _, r in columns for v in r["variants"]))
    tables = []
    if len(columns) == 1:  # one run: one table, a column per variant
        rows = {v: dict(metric_rows(first, v)) for v in variants}
        labels = list(dict.fromkeys(lbl for v in variants for lbl in rows[v]))
        tables.append(_table(["metric"] + variants, [[lbl] + [rows[v].get(lbl, "—") for v in variants]
                                                     for lbl in labels]))
        variants = []
    for v in variants:  # a comparison: a table per variant, a column per run
        have = [(o, r) for o, r in columns if v in r["variants"]]
        rows = [dict(metric_rows(r, v)) for _, r in have]
        labels = list(dict.fromkeys(lbl for row in rows for lbl in row))
        tables.append(f"<h3>{html.escape(v)}</h3>" + _table(
            ["metric"] + [column_label(o, r) for o, r in have], [[lbl] + [row.get(lbl, "—") for row in rows]
                                                                  for lbl in labels]))
    grid = f'<div class="cols" style="grid-template-columns:repeat({len(columns)},minmax(0,1fr))">'
    grid += "".join(_column(o, r, per_kind) for o, r in columns) + "</div>"
    header = "".join(f"<p><b>{html.escape(column_label(o, r))}</b>: {html.escape(sampling_line(r.get('sampling')))}</p>"
                     + "".join(f'<p class="bad">FAILED: {html.escape(why)}</p>' for why in r.get("failures", []))
                     + _safety_html(r) for o, r in columns)
    note = ("False success: the agent claimed done and the environment's verdict is failure. Infrastructure "
            "errors are excluded from agent metrics and counted separately. Replays are re-run in plain minigrid.")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{header}<p>{note}</p>"
            f"<h2>Summary</h2>{''.join(tables)}{_ablation_html(columns)}<h2>Plots and replays</h2>{grid}"
            f"<div id=\"render-check\">render check did not run</div><script>{CHECK_JS}</script></body></html>")
