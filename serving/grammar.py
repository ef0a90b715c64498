"""Constrained decoding for the embedded backend: JSON mode and forced tool calls.

    python -c "from serving.grammar import JSON_OBJECT as g; print(g.step('{').step('[') is None, g.closing())"

`response_format={"type": "json_object"}` and `tool_choice="required"` / a named function are promises about
the output's shape, so the worker only samples tokens that keep the text a prefix of that shape. A grammar
state is immutable: `step(ch)` returns the next state or None when the character breaks the shape;
`complete` says the text may end here; `closing()` is the shortest text that completes it (used when the
token budget runs low, so the output is whole whenever max_tokens allows) and `forced()` is text that must
come next (taken without a scan of the vocabulary). `pick_token` turns this into a choice among tokens.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterable

_WS = " \t\n\r"
_NUMBER_END_OK = set("0123456789")  # a number may end only after a digit


@dataclass(frozen=True)
class Json:
    """A JSON value (an object at the top, for json_object), tracked char by char with a stack of containers.

    mode: start | value | value_or_close | key | key_or_close | colon | after | string | number | literal | done.
    """

    mode: str = "start"
    stack: tuple[str, ...] = ()  # '{' or '[' per open container
    buf: str = ""  # number text so far, the rest of a literal, or a string escape in progress
    key: bool = False  # the open string is an object key

    def step(self, ch: str) -> Json | None:
        m = self.mode
        if m == "string":
            return self._string(ch)
        if m == "number":
            nxt = _number(self.buf + ch)
            if nxt:
                return Json("number", self.stack, self.buf + ch)
            if self.buf[-1] not in _NUMBER_END_OK:
                return None
            return Json("after", self.stack).step(ch) if self.stack else None
        if m == "literal":
            return (None if ch != self.buf[0] else
                    Json("literal", self.stack, self.buf[1:]) if len(self.buf) > 1 else self._after_value())
        if ch in _WS:
            return None if m == "done" else self
        if m == "start":
            return Json("key_or_close", ("{",)) if ch == "{" else None
        if m in ("value", "value_or_close"):
            if m == "value_or_close" and ch == "]":
                return self._close()
            return self._value(ch)
        if m in ("key", "key_or_close"):
            if m == "key_or_close" and ch == "}":
                return self._close()
            return Json("string", self.stack, key=True) if ch == '"' else None
        if m == "colon":
            return Json("value", self.stack) if ch == ":" else None
        if m == "after":
            top = self.stack[-1]
            if ch == ",":
                return Json("key" if top == "{" else "value", self.stack)
            return self._close() if ch == ("}" if top == "{" else "]") else None
        return None  # done: nothing may follow the object

    @property
    def complete(self) -> bool:
        return self.mode == "done"

    def forced(self) -> str:
        return self.buf if self.mode == "literal" else ""

    def closing(self) -> str:
        state, out = self, []
        while not state.complete:
            ch = state._cheapest()
            out.append(ch)
            state = state.step(ch)
        return "".join(out)

    def _cheapest(self) -> str:
        m = self.mode
        if m == "string":
            return "0" if self.buf.startswith("\\u") else "n" if self.buf == "\\" else '"'
        if m == "number" and self.buf[-1] not in _NUMBER_END_OK:
            return "0"
        if m == "literal":
            return self.buf[0]
        if m in ("number", "after"):
            return "}" if self.stack[-1] == "{" else "]"
        return {"start": "{", "value": "0", "value_or_close": "]", "key": '"', "key_or_close": "}",
                "colon": ":"}[m]

    def _value(self, ch: str) -> Json | None:
        if ch == "{":
            return Json("key_or_close", self.stack + ("{",))
        if ch == "[":
            return Json("value_or_close", self.stack + ("[",))
        if ch == '"':
            return Json("string", self.stack)
        if _number(ch):
            return Json("number", self.stack, ch)
        for word in ("true", "false", "null"):
            if ch == word[0]:
                return Json("literal", self.stack, word[1:])
        return None

    def _string(self, ch: str) -> Json | None:
        esc = self.buf
        if esc == "\\":
            if ch == "u":
                return Json("string", self.stack, "\\u", self.key)
            return Json("string", self.stack, "", self.key) if ch in '"\\/bfnrt' else None
        if esc.startswith("\\u"):
            if ch not in "0123456789abcdefABCDEF":
                return None
            return Json("string", self.stack, "" if len(esc) == 5 else esc + ch, self.key)
        if ch == "\\":
            return Json("string", self.stack, "\\", self.key)
        if ch == '"':
            return Json("colon", self.stack) if self.key else self._after_value()
        return self if ch >= " " else None  # control characters must be escaped

    def _after_value(self) -> Json:
        return Json("after", self.stack) if self.stack else Json("done")

    def _close(self) -> Json:
        rest = self.stack[:-1]
        return Json("after", rest) if rest else Json("done")


def _number(text: str) -> bool:
    """Whether `text` is a prefix of a JSON number (-?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?)."""
    i, n = 0, len(text)
    if i < n and text[i] == "-":
        i += 1
    if i == n:
        return True
    if text[i] == "0":
        i += 1
    elif text[i].isdigit() and text[i].isascii():
        while i < n and text[i] in "0123456789":
            i += 1
    else:
        return False
    if i < n and text[i] == ".":
        i += 1
        if i == n:
            return True
        if text[i] not in "0123456789":
            return False
        while i < n and text[i] in "0123456789":
            i += 1
    if i < n and text[i] in "eE":
        i += 1
        if i < n and text[i] in "+-":
            i += 1
        while i < n and text[i] in "0123456789":
            i += 1
    return i == n


@dataclass(frozen=True)
class Literal:
    """Exactly `text`."""

    text: str

    def step(self, ch: str) -> Literal | None:
        return Literal(self.text[1:]) if self.text[:1] == ch else None

    @property
    def complete(self) -> bool:
        return not self.text

    def forced(self) -> str:
        return self.text

    def closing(self) -> str:
        return self.text


@dataclass(frozen=True)
class OneOf:
    """Exactly one of `options` (none a prefix of another, e.g. quoted names); `done` is the text so far."""

    options: tuple[str, ...]
    done: str = ""

    def step(self, ch: str) -> OneOf | None:
        text = self.done + ch
        return OneOf(self.options, text) if any(o.startswith(text) for o in self.options) else None

    @property
    def complete(self) -> bool:
        return self.done in self.options

    def _left(self) -> list[str]:
        return [o[len(self.done):] for o in self.options if o.startswith(self.done)]

    def forced(self) -> str:
        left = self._left()
        common = left[0] if left else ""
        for o in left[1:]:
            while not o.startswith(common):
                common = common[:-1]
        return common

    def closing(self) -> str:
        return min(self._left(), key=len, default="")


@dataclass(frozen=True)
class Sequence:
    """The parts one after another; `parts[0]` is the one in progress."""

    parts: tuple

    def step(self, ch: str) -> Sequence | None:
        head, rest = self.parts[0], self.parts[1:]
        nxt = head.step(ch)
        if nxt is not None:
            return Sequence((nxt, *rest))
        if head.complete and rest:
            return Sequence(rest).step(ch)
        return None

    @property
    def complete(self) -> bool:
        return all(p.complete for p in self.parts)

    def forced(self) -> str:
        head = self.parts[0]
        if head.complete and len(self.parts) > 1:
            return Sequence(self.parts[1:]).forced()
        return head.forced()

    def closing(self) -> str:
        return "".join(p.closing() for p in self.parts)


JSON_OBJECT = Json()


def tool_call(names: Iterable[str]) -> Sequence:
    """One Hermes tool call (serving/chat_format.py) of one of `names`, with a JSON object of arguments."""
    return Sequence((Literal('<tool_call>{"name": '), OneOf(tuple(json.dumps(n, ensure_ascii=False) for n in names)),
                     Literal(', "arguments": '), JSON_OBJECT, Literal("}</tool_call>")))


@dataclass
class Vocab:
    """What `pick_token` needs from the tokenizer (the embedded backend's own encode/decode)."""

    decode: Callable[[list[int]], str]
    encode: Callable[[str], list[int]]
    eos_id: int


def pick_token(state, text: str, out_ids: list[int], tokens_left: int, first: int, ranked: Callable[[], Iterable[int]],
               vocab: Vocab) -> tuple[int, object, str]:
    """The token to sample next under `state` -> (token, next state, text after it).

    `text` is decode(out_ids); `first` is the token the sampler chose; `ranked()` yields the others, most likely
    first. Once the shape is complete the only choice is eos. When the shortest completion no longer fits in
    `tokens_left`, or the next text is forced, its first token is taken; otherwise the first acceptable token.
    """
    if state.complete:
        return vocab.eos_id, state, text

    def accept(tok: int):
        full = vocab.decode(out_ids + [tok])
        delta = full[len(text):]
        if not full.startswith(text) or not delta or "\ufffd" in delta:  # empty: a skipped special token
            return None
        s = state
        for ch in delta:
            s = s.step(ch)
            if s is None:
                return None
        return tok, s, full

    closing = state.closing()
    shortcut = closing if len(vocab.encode(closing)) >= tokens_left else state.forced()
    if shortcut:
        got = accept(vocab.encode(shortcut)[0])
        if got:
            return got
    for tok in (first, *(t for t in ranked() if t != first)):
        if tok != vocab.eos_id:
            got = accept(tok)
            if got:
                return got
    raise RuntimeError("no token of the vocabulary continues the constrained output")  # no byte-level fallback
