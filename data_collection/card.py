"""The dataset card and the two read-side commands.

    lam data stats runs/data                                   # the card, recomputed from the shards
    lam data show runs/data --episode BabyAI-GoToLocal-v0-16   # one episode as a readable transcript

`write_card` puts `card.json` and `README.md` next to the data after every collection: counts
and success rates per level (from the manifest's batch ledger, so failures, duplicates and
crashes are counted even though only some are stored), the episode-length histogram of train/,
and a YAML header that lets `datasets.load_dataset(DIR)` find the train and failures splits.
"""
from __future__ import annotations

import difflib
import json
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_collection.schema import SCHEMA_VERSION, StepRow, table_rows
from data_collection.store import LEVEL_COUNTERS, DatasetError, TrajectoryStore, _atomic_write_bytes

def _histogram(lengths: list[int]) -> dict[str, int]:
    """Episode lengths in power-of-two bins: {"1": n, "2-3": n, "4-7": n, ...}."""
    counts = Counter(1 << (max(n, 1).bit_length() - 1) for n in lengths)
    return {(f"{lo}" if lo == 1 else f"{lo}-{2 * lo - 1}"): counts[lo] for lo in sorted(counts)}


def _lengths(store: TrajectoryStore, subset: str) -> tuple[list[int], dict[str, int]]:
    if not store.shard_paths(subset):
        return [], {}
    t = store.read(subset, columns=["episode_id", "variant"])
    per_ep = t.group_by("episode_id").aggregate([("variant", "count"), ("variant", "min")])
    variants = Counter(v or "none" for v in per_ep.column("variant_min").to_pylist())
    return per_ep.column("variant_count").to_pylist(), dict(variants)


def dataset_stats(root: str | Path) -> dict:
    """Everything the card says, recomputed from the manifest and the shards (which it validates)."""
    store = TrajectoryStore(Path(root))
    m = store.manifest()
    if not m["shards"] and not m.get("batches"):
        raise DatasetError(f"no shards in {store.root} (is this a lam dataset directory?)")
    levels: dict[str, Counter] = {}
    reasons: Counter = Counter()
    for b in m.get("batches", {}).values():
        for level, counts in b["levels"].items():
            levels.setdefault(level, Counter({k: 0 for k in LEVEL_COUNTERS})).update(counts)
        reasons.update(b.get("end_reasons", {}))
    train_len, train_var = _lengths(store, "train")
    fail_len, _ = _lengths(store, "failures")
    per_level = {
        lvl: {**c, "success_rate": round(c["success"] / c["attempted"], 4) if c["attempted"] else None}
        for lvl, c in sorted(levels.items())
    }
    total = Counter()
    for c in levels.values():
        total.update(c)
    files = [p for p in store.shard_paths()]
    return {
        "schema_version": SCHEMA_VERSION,
        "env": m["meta"].get("env"),
        "policy": m["meta"].get("policy"),
        "requested": m["meta"].get("episodes_requested"),
        "train_episodes": len(train_len),
        "failure_episodes": len(fail_len),
        "complete": len(train_len) == m["meta"].get("episodes_requested"),
        "totals": {**{k: total[k] for k in LEVEL_COUNTERS},
                   "success_rate": round(total["success"] / total["attempted"], 4) if total["attempted"] else None},
        "levels": per_level,
        "end_reasons": dict(reasons.most_common()),
        "variants": train_var,
        "train_steps": sum(train_len),
        "episode_length": {
            "mean": round(sum(train_len) / len(train_len), 2) if train_len else None,
            "max": max(train_len, default=None),
            "histogram": _histogram(train_len),
        },
        "shards": {"files": len(files), "bytes": sum(p.stat().st_size for p in files)},
        "updated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def render_card(s: dict) -> str:
    splits = [f"  - split: {n}\n    path: {n}/*.parquet" for n, k in (("train", "train_episodes"), ("failures", "failure_episodes")) if s[k]]
    lines = ["---", "configs:", "- config_name: default", "  data_files:", *splits, "---", ""] if splits else []
    t = s["totals"]
    rate = f"{100 * t['success_rate']:.1f}%" if t["success_rate"] is not None else "n/a"
    lines += [
        f"# lam trajectory dataset ({s['env']})", "",
        f"{s['train_episodes']} of {s['requested']} requested unique, environment-verified episodes in `train/` "
        f"({'complete' if s['complete'] else 'INCOMPLETE: resume with lam collect ... --resume'}); "
        f"{s['failure_episodes']} labelled failures in `failures/`. Trajectory schema version {s['schema_version']} "
        "(data_collection/schema.py), one row per step.", "",
        f"Policy: `{json.dumps(s['policy'])}`. Tasks attempted: {t['attempted']}, verified successes {t['success']} "
        f"({rate}), duplicates dropped {t['duplicates']}, crashed without a trajectory {t['errors']}.", "",
        "| level | attempted | success rate | kept (train) | failures | duplicates | time limit | policy error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lvl, c in s["levels"].items():
        sr = f"{100 * c['success_rate']:.1f}%" if c["success_rate"] is not None else "n/a"
        lines.append(f"| {lvl} | {c['attempted']} | {sr} | {c['kept']} | {c['failures']} | {c['duplicates']} | "
                     f"{c['time_limit']} | {c['policy_error']} |")
    hist = s["episode_length"]["histogram"]
    width = max(hist.values(), default=1)
    lines += ["", f"Episode length in train/ (steps; mean {s['episode_length']['mean']}, max {s['episode_length']['max']}):",
              "", "```"]
    lines += [f"{k:>9} | {'#' * max(1, round(40 * v / width))} {v}" for k, v in hist.items()]
    lines += ["```", "", f"End reasons: {s['end_reasons']}. Mission variants in train/: {s['variants']}.", "",
              f"{s['shards']['files']} Parquet shards, {s['shards']['bytes'] / 1e6:.1f} MB. Updated {s['updated_at']}.",
              "", "```python", "import datasets", "ds = datasets.load_dataset(\"parquet\", data_files=\"train/*.parquet\", split=\"train\")",
              "```", ""]
    return "\n".join(lines)


def write_card(store: TrajectoryStore) -> dict:
    s = dataset_stats(store.root)
    _atomic_write_bytes(store.root / "card.json", json.dumps(s, indent=1).encode())
    _atomic_write_bytes(store.root / "README.md", render_card(s).encode())
    return s


def transcript(root: str | Path, episode_id: str) -> str:
    """One episode, step by step, as the agent saw it; searched in train/ then failures/."""
    store = TrajectoryStore(Path(root))
    if not (store.root / "manifest.json").exists():
        raise DatasetError(f"no manifest.json in {store.root} (is this a lam dataset directory?)")
    for subset in ("train", "failures"):
        for path in store.shard_paths(subset):
            store.check_shard(path)
            t = pq.read_table(path, filters=[("episode_id", "=", episode_id)])
            if t.num_rows:
                return _render(sorted(table_rows(t), key=lambda r: r.step), subset)
    ids = sorted({i for path in store.shard_paths()
                  for i in pc.unique(pq.read_table(path, columns=["episode_id"]).column(0)).to_pylist()})
    near = difflib.get_close_matches(episode_id, ids, n=5, cutoff=0.8) or ids[:3]
    raise DatasetError(f"no episode {episode_id!r} in {store.root} ({len(ids)} episodes, ids are LEVEL-SEED)"
                       + (f"; try {', '.join(near)}" if near else ""))


def _field(label: str, text: str, indent: int) -> list[str]:
    """`label  first line`, further lines aligned under the first."""
    lines = (text or "").splitlines() or [""]
    return [f"{label:<{indent}}{lines[0]}"] + [" " * indent + line for line in lines[1:]]


def _message_text(m: dict) -> str:
    parts = [m["content"]] if m.get("content") else []
    parts += [f"call {c['function']['name']}({c['function']['arguments']})" for c in m.get("tool_calls") or []]
    return "\n".join(parts)


def _conversation(msgs: list[dict], prev: list[dict], tools: list[dict], prev_tools: list[dict]) -> list[str]:
    """The stored prompt of a step: the messages new since the previous step's prompt (a growing
    conversation repeats its prefix), and the tools where they changed."""
    out = []
    if tools and tools != prev_tools:
        out += _field("  tools", ", ".join(t["function"]["name"] for t in tools), 14)
    same = 0
    while same < min(len(msgs), len(prev)) and msgs[same] == prev[same]:
        same += 1
    if same:
        out.append(f"  prompt    ({same} messages as in the previous step's prompt)")
    for m in msgs[same:]:
        out += _field(f"  [{m['role']}]", _message_text(m), 14)
    return out


def _render(rows: list[StepRow], subset: str) -> str:
    r0, last = rows[0], rows[-1]
    verdict = "success, verified by the environment" if r0.episode_success else f"not verified ({r0.end_reason})"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r0.created_at))
    out = [
        f"episode  {r0.episode_id}   ({subset}/)",
        f"task     {r0.task_key}   ({r0.level}  seed {r0.seed}  split {r0.split})",
    ]
    if r0.variant:
        out.append(f"variant  {r0.variant} of {r0.base_level}: {r0.base_request!r}")
    out += _field("request", r0.request, 9)
    out += [
        f"policy   {r0.policy}  ({r0.model})  code {r0.code_version}  collected {when}",
        f"outcome  {verdict} after {len(rows)} steps" + (f"; {r0.error}" if r0.error else ""),
        "",
    ]
    prev_msgs, prev_tools = [], []
    for r in rows:
        out.append(f"step {r.step}")
        msgs, tools = r.chat_messages(), r.chat_tools()
        out += _conversation(msgs, prev_msgs, tools, prev_tools)
        prev_msgs, prev_tools = msgs, tools
        if not msgs:  # the prompt shows them; a row without one (no step taken) shows them alone
            out += _field("  feedback", r.prev_feedback, 14) if r.prev_feedback else []
            out += _field("  state", r.state, 14)
        flags = [f for f, on in (("invalid", not r.valid), ("blocked", r.blocked), ("claims done", r.claimed_done)) if on]
        out += _field("  action", (r.action or repr(r.raw_output)) + (f"   [{', '.join(flags)}]" if flags else ""), 14)
    end = f"  => {last.feedback}" if last.feedback else ""
    out.append(f"end: {r0.end_reason}{end}")
    return "\n".join(out)
