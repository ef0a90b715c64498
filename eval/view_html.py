"""The pages of `lam view DIR` (eval/view.py), rendered on the server: plain HTML, the console's stylesheet,
no script. Every recorded string goes through `esc`: transcripts hold model output."""
from __future__ import annotations

import html
import json
from urllib.parse import quote, urlencode

from data_collection.schema import StepRow

PAGE_SIZE = 200
LABELS = {"false_success": "false success", "failure": "failure", "infra_error": "infra error", "success": "success"}


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def page(title: str, body: str, header: str = "") -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<link rel="stylesheet" href="/static/console.css"></head><body>'
            f'<header><h1><a href="/">lam view</a></h1>{header}</header><main><section id="detail">{body}</section>'
            f'</main></body></html>')


def _badge(outcome: str) -> str:
    return f'<span class="badge o-{outcome}">{LABELS[outcome]}</span>'


def _yes_no(v: bool) -> str:
    return f'<span class="{"yes" if v else "no"}">{"yes" if v else "no"}</span>'


def _url(**params) -> str:
    q = {k: v for k, v in params.items() if v not in (None, "all", 0)}
    return "/?" + urlencode(q) if q else "/"


def episodes_page(index, outcome: str, store: int | None, offset: int) -> str:
    counts = index.counts()
    scoped = index.select("all", store)
    links = [f'<a href="{_url(outcome="all", store=store)}" class="{"on" if outcome == "all" else ""}" '
             f'data-outcome="all">all ({len(scoped)})</a>']
    for o in counts:
        n = sum(e.outcome == o for e in scoped)
        links.append(f'<a href="{_url(outcome=o, store=store)}" class="{"on" if outcome == o else ""}" '
                     f'data-outcome="{o}">{LABELS[o]} ({n})</a>')
    stores = " · ".join(
        f'<a href="{_url(outcome=outcome, store=i)}" class="{"on" if store == i else ""}">{esc(s.label)}</a> '
        f'<span class="muted">({s.kind})</span>' for i, s in enumerate(index.stores))
    chosen = index.select(outcome, store)
    shown = chosen[offset: offset + PAGE_SIZE]
    rows = []
    for e in shown:
        link = f"/episode/{e.store}/{quote(e.episode_id, safe='')}"
        rows.append(f'<tr data-episode="{esc(e.episode_id)}" data-outcome="{e.outcome}">'
                    f'<td>{_badge(e.outcome)}</td><td><a href="{link}">{esc(e.episode_id)}</a></td>'
                    f'<td>{esc(index.stores[e.store].label)}</td><td>{esc(e.level)} · seed {e.seed}</td>'
                    f'<td>{e.steps}</td><td>{"done" if e.claimed else "—"}</td><td>{_yes_no(e.verified)}</td>'
                    f'<td>{esc(e.end_reason)}</td><td>{esc(e.policy)}</td><td class="muted">{esc(e.request[:80])}</td></tr>')
    more = []
    if offset > 0:
        more.append(f'<a href="{_url(outcome=outcome, store=store, offset=max(0, offset - PAGE_SIZE))}">previous</a>')
    if offset + PAGE_SIZE < len(chosen):
        more.append(f'<a href="{_url(outcome=outcome, store=store, offset=offset + PAGE_SIZE)}">next</a>')
    body = (f'<h2>{esc(index.path)}: {len(index.episodes)} episodes · {counts["false_success"]} false successes</h2>'
            f'<p class="filters" id="filters">outcome: {" ".join(links)}</p>'
            f'<p class="filters">stores: <a href="{_url(outcome=outcome)}" class="{"on" if store is None else ""}">all</a>'
            f' · {stores}</p>'
            f'<p class="muted">showing {offset + 1 if shown else 0}–{offset + len(shown)} of {len(chosen)}; '
            f'false successes (claimed done, not verified by the environment) first {" ".join(more)}</p>'
            '<table id="episodes"><thead><tr><th>outcome</th><th>episode</th><th>store</th><th>task</th><th>steps</th>'
            '<th>claimed</th><th>verified</th><th>end</th><th>policy</th><th>request</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')
    return page(f"lam view {index.path}", body)


def _field(name: str, value, pre: bool = True) -> str:
    if value in ("", None):
        return ""
    inner = f"<pre>{esc(value)}</pre>" if pre else value
    return f'<div class="field"><b>{esc(name)}</b>{inner}</div>'


def _messages(r: StepRow) -> str:
    msgs = r.chat_messages()
    if not msgs:
        return ""
    text = "\n\n".join(f"[{m.get('role')}] {m.get('content') if isinstance(m.get('content'), str) else json.dumps(m)}"
                       for m in msgs)
    return (f"<details><summary>conversation the policy was given ({len(msgs)} messages)</summary>"
            f"<pre>{esc(text)}</pre></details>")


def _frame(e, k: int, label: str) -> str:
    if e.env != "babyai":
        return ""
    return f'<img class="frame" src="/frame/{e.store}/{quote(e.episode_id, safe="")}/{k}.png" alt="{esc(label)}">'


def _step(e, r: StepRow) -> str:
    flags = " · ".join(f for f in ("" if r.valid else "invalid", f"{r.retries} retries" if r.retries else "",
                                   "blocked" if r.blocked else "", "claims done" if r.claimed_done else "",
                                   "verified success" if r.verified_success else "") if f)
    cls = " ".join(c for c, on in (("blocked", r.blocked), ("claimed", r.claimed_done),
                                   ("verified", r.verified_success)) if on)
    return (f'<li class="step {cls}" data-step="{r.step}">{_frame(e, r.step, f"state before step {r.step}")}'
            f'<div class="body"><h3>step {r.step}{f" <span class=muted>· {esc(flags)}</span>" if flags else ""}</h3>'
            + _field("feedback in", r.prev_feedback) + _field("observation", r.state)
            + _field("model output", r.raw_output) + _field("action", r.action or "(none grounded)")
            + _field("feedback", r.feedback)
            + _field("safety", "blocked by the safety guard" if r.blocked else "")
            + _field("reward", str(r.reward) if r.reward else "") + _messages(r) + "</div></li>")


def _replay_line(e, replay: dict) -> str:
    if replay["verdict"] is None:
        return f'<span class="none" id="replay">not replayed: {esc(replay["error"])}</span>'
    verdict = "success" if replay["verdict"] else "failure"
    if replay["matches"]:
        return f'<span class="yes" id="replay" data-matches="true">{verdict}, as recorded</span>'
    return (f'<span class="no" id="replay" data-matches="false">{verdict}: differs from the recorded verdict '
            f'({"success" if e.verified else "failure"})</span>')


def episode_page(index, e, rows: list[StepRow], replay: dict) -> str:
    r0, last = rows[0], rows[-1]
    info = index.stores[e.store]
    summary = (f'<div class="summary" id="summary">{_badge(e.outcome)} <span><b>claimed done:</b> {"yes" if e.claimed else "no"}</span>'
               f'<span><b>verified:</b> {_yes_no(e.verified)}</span><span><b>end:</b> {esc(e.end_reason)}</span>'
               f'<span><b>steps:</b> {e.steps}</span><span><b>replay verdict:</b> {_replay_line(e, replay)}</span></div>')
    meta = (f'<p class="muted">{esc(info.label)} ({info.kind}) · {esc(e.level)} · seed {e.seed} · split {esc(r0.split)}'
            f' · policy {esc(r0.policy)}{" · model " + esc(r0.model) if r0.model else ""}</p>')
    body = (f'<h2>{esc(e.episode_id)}</h2>{meta}{summary}' + _field("request", r0.request)
            + _field("error", last.error))
    steps = "".join(_step(e, r) for r in rows if r.step >= 0)
    final = (f'<li class="step" data-step="final">{_frame(e, e.steps, "final state")}<div class="body">'
             f'<h3>end: {esc(e.end_reason)}</h3>{_field("verified", "yes" if e.verified else "no")}</div></li>')
    back = f'<p><a href="{_url(outcome=e.outcome)}">← {LABELS[e.outcome]} episodes</a></p>'
    return page(e.episode_id, back + body + f'<ol class="transcript" id="transcript">{steps}{final}</ol>')
