"""Value marks: a model points at a value it has seen instead of spelling it out.

A small model trained from scratch learns which function to call long before it learns to copy a name it
has never seen ("XAKY", "recipe_23.csv") token by token into the arguments (bench/RESULTS.md, "Tool world,
third session": 0-4 of 60 unseen values copied after 3M tokens). Set-of-Mark prompting's answer, for text:
the model's view of the conversation tags every value with a numbered mark,

    user:      Add XAKY [$1] to my watchlist.
    tool:      {"matches": ["./recipe_23.csv [$2]"]}
    assistant: <tool_call>{"name": "rm", "arguments": {"file_name": "$2"}}</tool_call>

and the model writes `$2` where the value goes; the server expands it back before the client sees the call.
So choosing a value is choosing one of a few trained tokens, whatever the value is.

The view is a pure function of the OpenAI conversation, computed message by message (the marks of message i
depend only on messages[:i+1]), so it is prefix-stable: the server's prompt for step t is the training
sample's prefix for step t. Training and serving call `marked_view` on the same plain conversation (the
record keeps real values; a served reply carries real values), and both sides show the assistant's earlier
calls in canonical form: a value that has a mark is written as its mark.

What counts as a value (general lexical rules, no environment's vocabulary):
  - in JSON text (tool results): every string or number that is not an object key; a string with spaces is
    also read as prose (its values marked inside), a path is marked by its components;
  - in prose (user turns, non-JSON results): quoted spans ('...' or "..."), numbers, and words that carry a
    digit, an underscore, '@' or an inner '.', are in capitals (2+ letters), or are capitalized mid-sentence;
    in a user turn also a plain word that ends its clause ("Put it in archive."), where an imperative puts its
    object (only such words: marking every word gave the model a distractor beside each value).

Only tool conversations (a request that carries tools) get the view: a text-space action is a name from a
fixed list and copies nothing. A model directory trained with marks carries `lam_chat.json` {"value_marks": true}; the server reads it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SETTINGS_FILE = "lam_chat.json"
MARK_RE = re.compile(r"\$(\d+)(?!\d)")
_JSON_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:)?|(?<![\w.])(-?\d+(?:\.\d+)?)(?![\w.])')
_QUOTED = re.compile(r"'([^'\n]{1,80})'|\"([^\"\n]{1,80})\"")
_WORD = re.compile(r"[A-Za-z0-9_@./+-]+")
_BOUNDARY = r"(?<![A-Za-z0-9_]){}(?![A-Za-z0-9_])"
# English function words: never a value, even at the end of a clause
STOPWORDS = frozenset("""a an the and or but if then than so to of in on at by for from with into onto about as
is are was were be been am do does did have has had it its this that these those my me i you your we our
they their he she his her him them what which who whom whose when where why how all any each some no not
please can could would should will shall may might must also after before now there here""".split())


def mark(k: int) -> str:
    return f"${k}"


@dataclass
class MarkTable:
    """Values in order of first appearance; value k (1-based) is written `$k`."""

    values: list[str] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def add(self, value: str, numeric: bool) -> int:
        if value not in self.index:
            self.values.append(value)
            self.numeric.append(numeric)
            self.index[value] = len(self.values)
        return self.index[value]

    # -- model output -> real values ------------------------------------------------------------------
    def expand_text(self, text: str) -> str:
        def sub(m: re.Match) -> str:
            k = int(m.group(1))
            return self.values[k - 1] if 1 <= k <= len(self.values) else m.group(0)
        return MARK_RE.sub(sub, text)

    def expand_value(self, value: Any, schema: dict | None = None) -> Any:
        """An argument as the model wrote it -> the value the tool gets. A string that is exactly one mark
        becomes that value, typed by the parameter's schema (integer, number) or, without one, as it was seen."""
        if isinstance(value, dict):
            props = (schema or {}).get("properties") or {}
            return {k: self.expand_value(v, props.get(k)) for k, v in value.items()}
        if isinstance(value, list):
            item = (schema or {}).get("items")
            return [self.expand_value(v, item) for v in value]
        if not isinstance(value, str):
            return value
        m = MARK_RE.fullmatch(value.strip())
        if not m or not 1 <= int(m.group(1)) <= len(self.values):
            return self.expand_text(value)
        k = int(m.group(1))
        text, kind = self.values[k - 1], (schema or {}).get("type")
        try:
            if kind == "integer" or (kind is None and self.numeric[k - 1] and re.fullmatch(r"-?\d+", text)):
                return int(text)
            if kind == "number" or (kind is None and self.numeric[k - 1]):
                return float(text)
        except ValueError:
            pass  # not a number: the tool's own check says so
        return text

    # -- real values -> canonical marks (the assistant's turns in the model's view) --------------------
    def canonical_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.canonical_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.canonical_value(v) for v in value]
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, (int, float)):
            text = json.dumps(value)
            return mark(self.index[text]) if text in self.index else value
        if value in self.index:
            return mark(self.index[value])
        return self.canonical_text(value)

    def canonical_text(self, text: str) -> str:
        if not text or not self.values:
            return text
        # longest first, whole tokens only: "12" never rewrites the inside of "recipe_12.csv"
        for v in sorted(self.index, key=len, reverse=True):
            if v in text:
                text = re.sub(_BOUNDARY.format(re.escape(v)), lambda _m, k=self.index[v]: mark(k), text)
        return text


# -- finding values ------------------------------------------------------------------------------------
def _prose_spans(text: str, base: int = 0, loose: bool = False) -> list[tuple[int, int, str, bool]]:
    """Values in prose. loose (user turns): also a plain word that ends its clause ("move it to archive."),
    where an imperative request puts its object, unless it is a function word."""
    spans: list[tuple[int, int, str, bool]] = []
    taken: list[tuple[int, int]] = []
    for m in _QUOTED.finditer(text):
        g = 1 if m.group(1) is not None else 2
        if m.group(g).strip():
            spans.append((base + m.start(g), base + m.end(g), m.group(g), False))
            taken.append((m.start(), m.end()))
    for m in _WORD.finditer(text):
        if any(a <= m.start() < b for a, b in taken):
            continue
        word = m.group(0).strip(".,;:!?+-/")
        if not word:
            continue
        start = m.start() + m.group(0).index(word)
        before = text[:start].rstrip()
        initial = not before or before[-1] in ".!?:\n"
        final = re.match(r"\s*(?:[.,;:!?]|$)", text[start + len(word):]) is not None  # ends its clause
        numeric = re.fullmatch(r"-?\d+(?:\.\d+)?", word) is not None
        special = (numeric or any(c.isdigit() or c in "_@" for c in word) or "." in word
                   or (len(word) >= 2 and word.isupper()) or (word[0].isupper() and not initial)
                   or (loose and final and word.lower() not in STOPWORDS and not initial))
        if special:
            spans.append((base + start, base + start + len(word), word, numeric))
    return spans


def prose_values(text: str, loose: bool = False) -> list[tuple[str, bool]]:
    """(value, numeric) of each value in prose, in order (loose: the rules of a user turn)."""
    return [(v, n) for _, _, v, n in _prose_spans(text, loose=loose)]


def _json_spans(text: str) -> list[tuple[int, int, str, bool]] | None:
    try:
        json.loads(text)
    except ValueError:
        return None
    spans: list[tuple[int, int, str, bool]] = []
    for m in _JSON_TOKEN.finditer(text):
        if m.group(3) is not None:
            spans.append((m.start(3), m.end(3), m.group(3), True))
            continue
        if m.group(2) is not None:  # an object key
            continue
        raw = m.group(1)
        try:
            value = json.loads(f'"{raw}"')
        except ValueError:
            continue
        if not value or value != raw:  # empty, or escaped: its text is not the value's (left unmarked)
            continue
        start, end = m.start(1), m.end(1)
        if " " in value:
            spans += _prose_spans(value, start)
            spans.append((start, end, value, False))
        elif "/" in value:
            pos = start
            for part in value.split("/"):
                if part and part not in (".", ".."):
                    spans.append((pos, pos + len(part), part, False))
                pos += len(part) + 1
        else:
            spans.append((start, end, value, False))
    return spans


def annotate(text: str, table: MarkTable, prose_only: bool = False) -> str:
    """The text with ` [$k]` after each value, registering new values in `table`."""
    if not text:
        return text
    spans = None if prose_only else _json_spans(text)
    if spans is None:
        spans = _prose_spans(text, loose=prose_only)
    # a span's mark goes right after it; spans ending at the same place (a leaf and its last word) keep
    # their order: inner first
    out, last = [], 0
    for start, end, value, numeric in sorted(spans, key=lambda s: (s[1], -s[0])):
        out.append(text[last:end])
        out.append(f" [{mark(table.add(value, numeric))}]")
        last = end
    out.append(text[last:])
    return "".join(out)


def _call_arguments(tc: dict) -> Any:
    args = tc["function"]["arguments"]
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args


def marked_view(messages: list[dict]) -> tuple[list[dict], MarkTable]:
    """Template-ready messages (serving/chat_format.py to_template_messages) as a marked model sees them,
    and the table that expands what it writes next. System turns are left as they are."""
    table, out = MarkTable(), []
    for m in messages:
        m = dict(m)
        role = m.get("role")
        if role in ("user", "tool"):
            m["content"] = annotate(m.get("content") or "", table, prose_only=role == "user")
        elif role == "assistant":
            m["content"] = table.canonical_text(m.get("content") or "")
            if m.get("tool_calls"):
                calls = []
                for tc in m["tool_calls"]:
                    args = _call_arguments(tc)
                    canon = table.canonical_value(args) if not isinstance(args, str) else table.canonical_text(args)
                    calls.append({**tc, "function": {**tc["function"], "arguments": canon}})
                m["tool_calls"] = calls
        out.append(m)
    return out, table


def expand_reply(content: str | None, calls: list[dict], table: MarkTable,
                 tools: list[dict] | None = None) -> tuple[str | None, list[dict]]:
    """A marked model's reply (parsed: content, OpenAI tool_calls with JSON-string arguments) with every
    mark replaced by its value; arguments typed by the tools' parameter schemas."""
    schemas = {t["function"]["name"]: t["function"].get("parameters") for t in tools or [] if t.get("function")}
    out = []
    for tc in calls:
        args = _call_arguments(tc)
        if isinstance(args, str):
            expanded = table.expand_text(args)
        else:
            expanded = json.dumps(table.expand_value(args, schemas.get(tc["function"]["name"])), ensure_ascii=False)
        out.append({**tc, "function": {**tc["function"], "arguments": expanded}})
    return (table.expand_text(content) if content is not None else None), out


def read_settings(model_dir: str | Path) -> dict:
    """A model directory's chat settings (`lam_chat.json`), {} when it has none."""
    path = Path(model_dir) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it should hold {{\"value_marks\": true|false}}") from e
    if not isinstance(data, dict) or not isinstance(data.get("value_marks", False), bool):
        raise ValueError(f"{path} should hold {{\"value_marks\": true|false}}, got {data!r}")
    return data


def write_settings(model_dir: str | Path, value_marks: bool) -> None:
    (Path(model_dir) / SETTINGS_FILE).write_text(json.dumps({"value_marks": bool(value_marks)}) + "\n")
