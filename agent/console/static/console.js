// The lam agent console (served at / by `lam agent serve`). Everything goes through the public API:
// GET/POST/DELETE /v1/sessions..., live updates from each session's server-sent events
// (/v1/sessions/{id}/events, read with fetch because EventSource cannot send the Authorization header),
// BabyAI frames from /console/frame.png. Text from sessions is only ever set as textContent.
"use strict";

const state = {key: localStorage.getItem("lam-console-key") || "", sessions: new Map(), selected: null,
               steps: [], streams: new Map()};
const $ = (id) => document.getElementById(id);
const LIVE = ["idle", "running"];

function headers(json) {
  const h = state.key ? {"Authorization": "Bearer " + state.key} : {};
  if (json) h["Content-Type"] = "application/json";
  return h;
}

function showError(msg) {
  const el = $("error");
  el.textContent = msg;
  el.classList.toggle("shown", !!msg);
}

async function api(method, path, body) {
  const r = await fetch(path, {method, headers: headers(body !== undefined),
                               body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = data.error || {};
    throw new Error(`${method} ${path}: ${r.status} ${e.code || ""} ${e.message || ""}`.trim());
  }
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function yesNo(v, none) {
  return v === null ? el("span", {class: "none"}, none) : el("span", {class: v ? "yes" : "no"}, v ? "yes" : "no");
}

// -- the sessions list ---------------------------------------------------------------------------
function claimOf(s) { return s.claim || (s.claimed_done ? "done" : ""); }

function sessionRow(s) {
  const t = s.task || {};
  const ended = !LIVE.includes(s.status);
  const tr = el("tr", {"data-id": s.id, "data-status": s.status, "data-false-success": String(!!s.false_success)},
    el("td", {}, el("code", {}, s.id)),
    el("td", {}, `${s.env} · ${t.level || ""} · seed ${t.seed}`),
    el("td", {}, (s.policy || {}).kind || ""),
    el("td", {}, el("span", {class: "badge s-" + s.status}, s.status),
       s.false_success ? el("span", {class: "badge o-false_success"}, "false success") : null),
    el("td", {class: "steps"}, s.steps),
    el("td", {}, claimOf(s) || el("span", {class: "none"}, "—")),
    el("td", {}, ended && s.status !== "cancelled" ? yesNo(!!s.success) : yesNo(null, "—")));
  if (s.id === state.selected) tr.classList.add("selected");
  tr.addEventListener("click", () => select(s.id));
  return tr;
}

function renderList() {
  const body = $("sessions").tBodies[0];
  const rows = [...state.sessions.values()].sort((a, b) => b.created - a.created);
  body.replaceChildren(...rows.map(sessionRow));
  $("count").textContent = `(${rows.length}, ${rows.filter((s) => LIVE.includes(s.status)).length} live)`;
}

function upsert(row) {
  const old = state.sessions.get(row.id) || {};
  const merged = {...old, ...row};
  delete merged.transcript;
  state.sessions.set(row.id, merged);
  renderList();
  if (row.id === state.selected) renderSummary(merged);
  if (row.status === "running") follow(row.id);
}

async function loadSessions() {
  try {
    const data = await api("GET", "/v1/sessions");
    state.sessions = new Map(data.sessions.map((s) => [s.id, s]));
    renderList();
    $("conn").textContent = state.key ? "key in use" : "no key";
    for (const s of data.sessions) if (s.status === "running") follow(s.id);
    showError("");
  } catch (e) {
    showError(e.message);
  }
}

// -- live updates: one server-sent event stream per followed session -------------------------------
async function follow(id) {
  if (state.streams.has(id)) return;
  const ctrl = new AbortController();
  state.streams.set(id, ctrl);
  try {
    const r = await fetch(`/v1/sessions/${id}/events`, {headers: headers(false), signal: ctrl.signal});
    if (!r.ok) throw new Error(`events of ${id}: ${r.status}`);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += value;
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const kind = (block.match(/^event: (.*)$/m) || [])[1];
        const data = (block.match(/^data: (.*)$/m) || [])[1];
        if (kind && data) onEvent(id, kind, JSON.parse(data));
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message);
  } finally {
    state.streams.delete(id);
  }
}

function onEvent(id, kind, data) {
  if (kind === "step") {
    const s = state.sessions.get(id);
    if (s) { s.steps = Math.max(s.steps || 0, data.step + 1); if (s.status === "idle") s.status = "running"; renderList(); }
    if (id === state.selected) addStep(data);
  } else if (kind === "end") {
    upsert(data);
    if (id === state.selected) addFinal();
  }
}

// -- one session's transcript ---------------------------------------------------------------------
async function select(id) {
  for (const [sid, ctrl] of state.streams) {  // keep streaming only what runs, and the one in view
    if (sid !== id && (state.sessions.get(sid) || {}).status !== "running") ctrl.abort();
  }
  state.selected = id;
  state.steps = [];
  $("transcript").replaceChildren();
  $("detail").hidden = false;
  renderList();
  try {
    const row = await api("GET", `/v1/sessions/${id}`);
    showSession(row);
    if (LIVE.includes(row.status)) follow(id);
  } catch (e) {
    showError(e.message);
  }
}

function showSession(row) {
  upsert(row);
  for (const s of row.transcript || []) addStep(s);
  if (!LIVE.includes(row.status)) addFinal();
}

function renderSummary(s) {
  const t = s.task || {};
  $("d-title").textContent = `session ${s.id} · ${s.env} · ${t.level} · seed ${t.seed} · split ${t.split}`;
  const parts = [
    ["status", el("span", {class: "badge s-" + s.status, id: "d-status"}, s.status)],
    ["steps", s.steps], ["claimed", claimOf(s) || "—"],
    ["verified", LIVE.includes(s.status) ? "—" : (s.success ? "success" : "not verified")],
    ["end", s.end_reason || "—"], ["invalid actions", s.invalid_actions], ["blocked", s.blocked_actions],
  ];
  const nodes = parts.map(([k, v]) => el("span", {}, el("b", {}, k + ": "), v));
  if (s.false_success) nodes.push(el("span", {class: "badge o-false_success"}, "false success: claimed done, not verified"));
  if (s.error) nodes.push(el("span", {class: "no"}, "error: " + s.error));
  $("d-summary").replaceChildren(...nodes);
  const live = LIVE.includes(s.status);
  $("b-step").disabled = !live || s.status === "running";
  $("b-run").disabled = !live || s.status === "running";
  $("b-cancel").disabled = !live;
}

function field(name, value, pre = true) {
  if (value === "" || value === null || value === undefined) return null;
  return el("div", {class: "field"}, el("b", {}, name), pre ? el("pre", {}, value) : value);
}

function requestOf(step) {
  // the task's request as the policy saw it: the first user message, without the state appended to it
  const user = (step.messages || []).find((m) => m.role === "user");
  if (!user || typeof user.content !== "string") return "";
  const c = user.content;
  return step.state && c.endsWith(step.state) ? c.slice(0, -step.state.length).trim() : c;
}

// Actions that reached the environment (grounded and not blocked), as eval/replays.py counts them.
function executed(steps) { return steps.filter((s) => s.action && !s.blocked).map((s) => s.action); }

function frameImg(actions, label) {
  const s = state.sessions.get(state.selected);
  if (!s || s.env !== "babyai") return null;
  const q = new URLSearchParams({level: s.task.level, seed: s.task.seed});
  for (const a of actions) q.append("a", a);
  const img = el("img", {class: "frame", alt: label});
  fetch("/console/frame.png?" + q, {headers: headers(false)})
    .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`frame: ${r.status}`))))
    .then((b) => { img.src = URL.createObjectURL(b); img.onload = () => img.setAttribute("data-loaded", "1"); })
    .catch((e) => { img.alt = label + " (" + e.message + ")"; });
  return img;
}

function addStep(s) {
  if (state.steps.some((x) => x.step === s.step)) return;
  state.steps.push(s);
  state.steps.sort((a, b) => a.step - b.step);
  if (s.step === 0) $("d-request").replaceChildren(...[field("request", requestOf(s))].filter(Boolean));
  const before = executed(state.steps.filter((x) => x.step < s.step));
  const flags = [s.valid ? null : "invalid", s.retries ? `${s.retries} retries` : null, s.blocked ? "blocked" : null,
                 s.claim ? `claims ${s.claim}` : null, s.verified_success ? "verified success" : null]
    .filter(Boolean).join(" · ");
  const calls = (s.tool_calls || []).map((c, i) => el("div", {},
    el("code", {}, `${c.name}(${JSON.stringify(c.arguments)})`), " → ",
    el("pre", {}, (s.tool_results || [])[i] ?? "")));
  const safety = [s.blocked ? "blocked by the safety guard" : null,
                  s.confirmed ? `${s.confirmed} action(s) confirmed` : null].filter(Boolean).join("; ");
  const msgs = s.messages || [];
  const li = el("li", {class: "step", "data-step": s.step},
    frameImg(before, `state before step ${s.step}`),
    el("div", {class: "body"},
      el("h3", {}, `step ${s.step}`, flags ? el("span", {class: "muted"}, " · " + flags) : null),
      field("feedback in", s.prev_feedback), field("observation", s.state), field("memory", s.memory),
      field("model output", s.raw_output),
      calls.length ? field("tool calls", el("div", {}, ...calls), false) : field("action", s.action || "(none grounded)"),
      field("feedback", s.feedback), field("safety", safety),
      field("reward", s.reward ? String(s.reward) : ""),
      msgs.length ? el("details", {}, el("summary", {}, `conversation the policy was given (${msgs.length} messages)`),
                       el("pre", {}, msgs.map((m) => `[${m.role}] ${typeof m.content === "string" ? m.content
                                                   : JSON.stringify(m.content)}`).join("\n\n"))) : null));
  if (s.blocked) li.classList.add("blocked");
  if (s.claim) li.classList.add("claimed");
  if (s.verified_success) li.classList.add("verified");
  const list = $("transcript");
  const next = [...list.children].find((c) => c.dataset.step !== "final" && Number(c.dataset.step) > s.step);
  list.insertBefore(li, next || list.querySelector('[data-step="final"]'));
}

function addFinal() {
  const s = state.sessions.get(state.selected);
  if (!s || document.querySelector('#transcript [data-step="final"]')) return;
  const verdict = s.success ? "the environment verified success" : "not verified by the environment";
  $("transcript").append(el("li", {class: "step", "data-step": "final"},
    frameImg(executed(state.steps), "final state"),
    el("div", {class: "body"}, el("h3", {}, "end: " + (s.end_reason || s.status)),
       field("claimed", claimOf(s) || "no claim", false), field("verified", verdict, false),
       s.false_success ? el("span", {class: "badge o-false_success"}, "false success") : null)));
}

// -- buttons ---------------------------------------------------------------------------------------
async function act(method, suffix) {
  const id = state.selected;
  try {
    const row = await api(method, `/v1/sessions/${id}${suffix}`);
    if (row.transcript) showSession(row); else upsert(row);
    if (!LIVE.includes(row.status)) addFinal();
  } catch (e) {
    showError(e.message);
  }
}

function readForm() {
  const f = new FormData($("new-session"));
  const kind = f.get("policy");
  const policy = {kind};
  if (kind === "scripted") policy.actions = String(f.get("actions")).split(",").map((a) => a.trim()).filter(Boolean);
  if (kind === "model") { policy.base_url = f.get("base_url"); policy.model = f.get("model"); }
  const body = {env: f.get("env"), seed: Number(f.get("seed") || 0), split: f.get("split"), policy,
                run: $("f-run").checked};
  if (f.get("level")) body.level = f.get("level");
  if (f.get("max_steps")) body.limits = {max_steps: Number(f.get("max_steps"))};
  return body;
}

$("new-session").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const row = await api("POST", "/v1/sessions", readForm());
    upsert(row);
    showError("");
    select(row.id);
  } catch (e) {
    showError(e.message);
  }
});
$("b-step").addEventListener("click", () => act("POST", "/step"));
$("b-run").addEventListener("click", () => act("POST", "/run"));
$("b-cancel").addEventListener("click", () => act("DELETE", ""));
$("use-key").addEventListener("click", () => {
  state.key = $("key").value.trim();
  localStorage.setItem("lam-console-key", state.key);
  for (const c of state.streams.values()) c.abort();
  loadSessions();
});
$("key").value = state.key;
loadSessions();
setInterval(loadSessions, 5000);  // sessions started elsewhere; running ones then stream their own events
