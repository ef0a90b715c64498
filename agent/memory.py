"""Agent memory: short-term (the last k steps: action, feedback, what changed) and long-term (an
episodic store of past successful episodes, retrieved by BM25 similarity of request and state).

Both are off by default (k = 0), and then prompts are byte-identical to the ones training renders.
When on, memory is added to the system message of the prompt and logged per step in the
transcript (`StepLog.memory`, `Episode.examples`).

    runner = RunnerConfig(memory={"short_term_k": 4, "long_term_k": 2, "store_path": "runs/memory.jsonl"})
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
from collections import Counter, deque
from dataclasses import dataclass


@dataclass
class MemoryConfig:
    # steps shown as "recent steps" (0 = off)
    short_term_k: int = 0
    # past successful episodes offered as examples (0 = off)
    long_term_k: int = 0
    # JSONL file backing the episodic store; None keeps it in memory (per worker)
    store_path: str | None = None
    # longest example action list shown, and characters of state/feedback kept per line
    max_example_actions: int = 24
    max_chars: int = 160

    @property
    def enabled(self) -> bool:
        return self.short_term_k > 0 or self.long_term_k > 0


def _short(text: str, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _flatten(state: str) -> list[str]:
    """State as comparable lines: JSON states become "path = value" lines, text states stay lines."""
    try:
        obj = json.loads(state)
    except (ValueError, TypeError):
        return [ln for ln in (state or "").splitlines() if ln.strip()]
    out: list[str] = []

    def walk(v, path):
        if isinstance(v, dict) and v:
            for k, x in v.items():
                walk(x, f"{path}.{k}" if path else str(k))
        elif isinstance(v, list) and v and len(v) <= 50:
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")
        else:
            out.append(f"{path} = {json.dumps(v, ensure_ascii=False)}")

    walk(obj, "")
    return out


def state_delta(before: str, after: str, limit: int = 4, max_chars: int = 160) -> str:
    """What changed between two states, as "+added; -removed" lines (at most `limit` of each)."""
    b, a = _flatten(before), _flatten(after)
    bs, as_ = set(b), set(a)
    added = [ln for ln in a if ln not in bs][:limit]
    removed = [ln for ln in b if ln not in as_][:limit]
    parts = [f"+{_short(x, max_chars)}" for x in added] + [f"-{_short(x, max_chars)}" for x in removed]
    return "; ".join(parts) if parts else "nothing"


class ShortTermMemory:
    """The last k steps with their action, feedback and what changed in the state."""

    def __init__(self, k: int, max_chars: int = 160) -> None:
        self.k, self.max_chars = k, max_chars
        self.items: deque = deque(maxlen=max(k, 1))

    def add(self, step: int, action: str, feedback: str, before: str, after: str) -> None:
        if self.k > 0:
            self.items.append((step, action, feedback, state_delta(before, after, max_chars=self.max_chars)))

    def render(self) -> str:
        if self.k <= 0 or not self.items:
            return ""
        lines = ["Recent steps (oldest first):"]
        for step, action, feedback, delta in self.items:
            fb = f" -> {_short(feedback, self.max_chars)}" if feedback else ""
            lines.append(f"- step {step}: {_short(action, self.max_chars)}{fb} | changed: {delta}")
        return "\n".join(lines)


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_]+", (text or "").lower())


class EpisodicStore:
    """Past successful episodes (request, first state, actions), searched with BM25 over request +
    state tokens. Append-only JSONL when `path` is set: a crash can only lose a partial last line,
    which loading skips. Thread-safe (the agent API shares one store across sessions)."""

    def __init__(self, path: str | None = None, k1: float = 1.5, b: float = 0.75) -> None:
        self.path, self.k1, self.b = path, k1, b
        self.items: list[dict] = []
        self._lock = threading.Lock()
        self._df: Counter = Counter()
        self._tf: list[Counter] = []
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        self._index(json.loads(line))
                    except (ValueError, KeyError):
                        continue  # a torn last line after a crash

    def __len__(self) -> int:
        return len(self.items)

    def _index(self, item: dict) -> None:
        tf = Counter(_tokens(item["request"] + " " + item["state"]))
        self.items.append(item)
        self._tf.append(tf)
        self._df.update(tf.keys())

    def add(self, env: str, episode_id: str, request: str, state: str, actions: list[str]) -> None:
        item = {"env": env, "episode_id": episode_id, "request": request, "state": state, "actions": actions}
        with self._lock:
            if any(x["episode_id"] == episode_id for x in self.items):
                return
            self._index(item)
            if self.path:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(item, ensure_ascii=False) + "\n")

    def search(self, env: str, request: str, state: str, k: int, exclude: str = "") -> list[dict]:
        query = set(_tokens(request + " " + state))
        with self._lock:
            n = len(self.items)
            if not n or k <= 0:
                return []
            avg = sum(sum(tf.values()) for tf in self._tf) / n
            scored = []
            for item, tf in zip(self.items, self._tf):
                if item["env"] != env or item["episode_id"] == exclude:
                    continue
                length, score = sum(tf.values()), 0.0
                for t in query & tf.keys():
                    idf = math.log(1 + (n - self._df[t] + 0.5) / (self._df[t] + 0.5))
                    score += idf * tf[t] * (self.k1 + 1) / (tf[t] + self.k1 * (1 - self.b + self.b * length / avg))
                if score > 0:
                    scored.append((score, item))
        scored.sort(key=lambda x: -x[0])
        return [dict(item, score=round(score, 3)) for score, item in scored[:k]]


def render_examples(examples: list[dict], max_actions: int, max_chars: int) -> str:
    if not examples:
        return ""
    lines = ["Solved examples of similar tasks:"]
    for i, ex in enumerate(examples, 1):
        acts = ex["actions"][:max_actions]
        more = f", ... (+{len(ex['actions']) - max_actions})" if len(ex["actions"]) > max_actions else ""
        lines.append(f"{i}. request: {_short(ex['request'], max_chars * 2)}")
        lines.append(f"   actions: {', '.join(_short(a, max_chars) for a in acts)}{more}")
    return "\n".join(lines)


class Memory:
    """One episode's memory: its short-term window plus the shared episodic store (may be None)."""

    def __init__(self, cfg: MemoryConfig, store: EpisodicStore | None = None) -> None:
        self.cfg = cfg
        self.store = store if store is not None else (EpisodicStore(cfg.store_path) if cfg.long_term_k > 0 else None)
        self.short = ShortTermMemory(cfg.short_term_k, cfg.max_chars)
        self.examples: list[dict] = []

    def begin(self, env: str, episode_id: str, request: str, state: str) -> None:
        self.short = ShortTermMemory(self.cfg.short_term_k, self.cfg.max_chars)
        self.examples = []
        if self.store is not None and self.cfg.long_term_k > 0:
            self.examples = self.store.search(env, request, state, self.cfg.long_term_k, exclude=episode_id)

    def text(self) -> str:
        """What the prompt gets this step ("" when memory is off or empty)."""
        parts = [render_examples(self.examples, self.cfg.max_example_actions, self.cfg.max_chars), self.short.render()]
        return "\n\n".join(p for p in parts if p)

    def remember(self, env: str, episode_id: str, request: str, state: str, actions: list[str], success: bool) -> None:
        if success and actions and self.store is not None:
            self.store.add(env, episode_id, request, state, actions)


def with_memory(messages: list[dict], text: str) -> list[dict]:
    """The prompt with memory appended to its system message (or a system message added)."""
    if not text:
        return messages
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}] + messages[1:]
    return [{"role": "system", "content": text}] + messages
