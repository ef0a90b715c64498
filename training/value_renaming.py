"""Value renaming: a training augmentation for tool conversations (`train.rename_values: FRACTION`).

A model trained on one split's names learns to point at a value's mark well where the value is a name it has
seen, and worse where it is not: the tool world's test tasks use only unseen names, and a model at 89% on
train-split tasks reached 56% on test-split ones (bench/RESULTS.md, "Value marks"). Renaming gives a fraction
of the training conversations fresh, random spellings of their values, consistently through the whole
conversation (request, calls, results, reply), so what the model learns cannot depend on which names it saw.

A word is renamed when it is part of a value the user turn names (serving/value_marks.py's strict prose rules:
file names, symbols, contacts, quoted texts; not a plain word ending a clause, which is as often the job's own
word, "watchlist") and is not a function word or part of a tool's name or parameters;
each letter becomes a random letter of the same case, digits and punctuation stay. The tool results stay
consistent with the calls because the same word is renamed everywhere ("find 'catalog'" -> "./catalog_66.csv"
becomes "find 'qbnrtel'" -> "./qbnrtel_66.csv"). Numbers are left as they are.

    lam train --data DIR --config configs/tools.yaml rename_values=0.5
"""
from __future__ import annotations

import json
import random
import re
import string
from dataclasses import replace

from serving.value_marks import STOPWORDS, prose_values

_LETTERS = re.compile(r"[A-Za-z]{2,}")


def _protected(tools: list[dict]) -> set[str]:
    words: set[str] = set()
    for t in tools or []:
        f = t.get("function", t)
        words.update(w.lower() for w in _LETTERS.findall(f.get("name", "")))
        for k, v in ((f.get("parameters") or {}).get("properties") or {}).items():
            words.update(w.lower() for w in _LETTERS.findall(k))
            for e in (v.get("enum") or []) if isinstance(v, dict) else []:
                words.update(w.lower() for w in _LETTERS.findall(str(e)))
    return words


def _spell(word: str, rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase if c.isupper() else string.ascii_lowercase) for c in word)


def _walk(value, sub):
    if isinstance(value, str):
        return sub(value)
    if isinstance(value, dict):
        return {k: _walk(v, sub) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, sub) for v in value]
    return value


def rename_values(messages: list[dict], tools: list[dict], rng: random.Random) -> list[dict]:
    """The conversation with its user-named values respelled (a new list; the input is not changed)."""
    keep = STOPWORDS | _protected(tools)
    words: set[str] = set()
    for m in messages:
        if m.get("role") == "user" and m.get("content"):
            # strict rules only: a plain word ending a clause is often the job's own word ("... to my watchlist.")
            for value, numeric in prose_values(m["content"]):
                if not numeric:
                    words.update(w for w in _LETTERS.findall(value) if w.lower() not in keep)
    if not words:
        return messages
    taken = {w.lower() for m in messages for w in _LETTERS.findall(json.dumps(m, ensure_ascii=False))}
    mapping: dict[str, str] = {}
    for w in sorted(words):
        new = _spell(w, rng)
        while new.lower() in taken or new.lower() in STOPWORDS:
            new = _spell(w, rng)
        taken.add(new.lower())
        mapping[w] = new
    pattern = re.compile(r"(?<![A-Za-z])(" + "|".join(map(re.escape, sorted(mapping, key=len, reverse=True))) + r")(?![A-Za-z])")

    def sub(text: str) -> str:
        return pattern.sub(lambda m: mapping[m.group(1)], text)

    out = []
    for m in messages:
        m = dict(m)
        if m.get("role") != "system" and isinstance(m.get("content"), str):
            m["content"] = sub(m["content"])
        if m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                args = tc["function"]["arguments"]
                if isinstance(args, str):
                    try:
                        args = json.dumps(_walk(json.loads(args), sub), ensure_ascii=False)
                    except ValueError:
                        args = sub(args)
                else:
                    args = _walk(args, sub)
                calls.append({**tc, "function": {**tc["function"], "arguments": args}})
            m["tool_calls"] = calls
        out.append(m)
    return out


def renamed(convs: list, fraction: float, seed: int) -> list:
    """`fraction` of the tool conversations (chosen by `seed`) respelled; the others, and every text-space
    conversation, as they were. Same count and order: renaming replaces, it does not add data."""
    if fraction <= 0:
        return convs
    rng = random.Random(seed)
    return [replace(c, messages=rename_values(c.messages, c.tools, rng)) if c.tools and rng.random() < fraction else c
            for c in convs]
