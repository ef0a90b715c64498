"""The prompt renderer shared by training and serving: a model sees at serving time exactly
the token sequence it was trained on.

The view is shown focused (`focus_view`): its lines in order of relevance to the request, the most
relevant last, next to where the model answers. A small model trained from scratch reads a line it must
act on there at once; found anywhere in the view it must first learn to bind an object to the position
written after it, which the tiny BabyAI model never did in its budget (bench/RESULTS.md, "Focus").

History is shown in fixed windows of `window` steps: the prompt at step t holds the steps since
the last multiple of `window`. Training cuts episodes into the same windows, so every training
position has exactly the context it will have at inference, and the context length stays bounded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class Turn:
    state: str  # what the agent saw before acting
    feedback: str  # what the environment said about the previous action ("" if nothing notable)
    action: str | None = None  # the grounded action text (None for the current, undecided step)


def system_prompt(action_names: list[str]) -> str:
    return "Reply with one action: " + ", ".join(action_names) + "."


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def relevance(request: str, line: str) -> tuple[int, int]:
    """(word pairs, words) the line shares with the request: "a red ball 2 steps left" scores (1, 2)
    against "put the red ball next to the blue key", "a red key" (0, 2), "a wall" (0, 0)."""
    req = _words(request)
    words = _words(line)
    pairs = set(zip(req, req[1:]))
    return sum(p in pairs for p in zip(words, words[1:])), len(set(words) & set(req))


def focus_view(request: str, state: str) -> str:
    """The view's lines, least relevant to the request first and the most relevant last; ties (and a
    view with nothing relevant) keep the environment's order. The same lines, only their order moves."""
    lines = state.split("\n")
    if len(lines) < 2:
        return state
    order = sorted(range(len(lines)), key=lambda i: relevance(request, lines[i]))  # stable: ties keep order
    return "\n".join(lines[i] for i in order)


def user_content(request: str, turn: Turn, first_in_window: bool, focus: bool = True) -> str:
    parts = [request] if first_in_window else []
    if turn.feedback:
        parts.append(turn.feedback)
    parts.append(focus_view(request, turn.state) if focus else turn.state)
    return "\n".join(parts)


def window_start(step: int, window: int) -> int:
    return (step // window) * window if window > 0 else 0


def render_messages(request: str, turns: list[Turn], action_names: list[str], window: int,
                    focus: bool = True) -> list[dict]:
    """Chat messages for deciding the action of the last turn (whose `action` is ignored).

    `turns[t]` is step t of the episode; the window keeps turns[window_start(t):t+1]. focus False (the
    harness's `focus` switched off): views as the environment wrote them."""
    t = len(turns) - 1
    shown = turns[window_start(t, window) :]
    messages = [{"role": "system", "content": system_prompt(action_names)}]
    for k, turn in enumerate(shown):
        messages.append({"role": "user", "content": user_content(request, turn, k == 0, focus)})
        if k < len(shown) - 1:
            messages.append({"role": "assistant", "content": turn.action or ""})
    return messages


def render_training_chunks(request: str, turns: list[Turn], action_names: list[str], window: int,
                           focus: bool = True) -> list[list[dict]]:
    """Whole-episode multi-turn samples: one conversation per window, every action an assistant turn."""
    chunks = []
    step = max(window, 1) if window > 0 else max(len(turns), 1)
    for start in range(0, len(turns), step):
        part = turns[start : start + step]
        messages = [{"role": "system", "content": system_prompt(action_names)}]
        for k, turn in enumerate(part):
            messages.append({"role": "user", "content": user_content(request, turn, k == 0, focus)})
            messages.append({"role": "assistant", "content": turn.action or ""})
        chunks.append(messages)
    return chunks
