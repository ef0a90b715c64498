"""The prompt renderer shared by training and serving: a model sees at serving time exactly
the token sequence it was trained on.

History is shown in fixed windows of `window` steps: the prompt at step t holds the steps since
the last multiple of `window`. Training cuts episodes into the same windows, so every training
position has exactly the context it will have at inference, and the context length stays bounded.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Turn:
    state: str  # what the agent saw before acting
    feedback: str  # what the environment said about the previous action ("" if nothing notable)
    action: str | None = None  # the grounded action text (None for the current, undecided step)


def system_prompt(action_names: list[str]) -> str:
    return "Reply with one action: " + ", ".join(action_names) + "."


def user_content(request: str, turn: Turn, first_in_window: bool) -> str:
    parts = [request] if first_in_window else []
    if turn.feedback:
        parts.append(turn.feedback)
    parts.append(turn.state)
    return "\n".join(parts)


def window_start(step: int, window: int) -> int:
    return (step // window) * window if window > 0 else 0


def render_messages(request: str, turns: list[Turn], action_names: list[str], window: int) -> list[dict]:
    """Chat messages for deciding the action of the last turn (whose `action` is ignored).

    `turns[t]` is step t of the episode; the window keeps turns[window_start(t):t+1]."""
    t = len(turns) - 1
    shown = turns[window_start(t, window) :]
    messages = [{"role": "system", "content": system_prompt(action_names)}]
    for k, turn in enumerate(shown):
        messages.append({"role": "user", "content": user_content(request, turn, k == 0)})
        if k < len(shown) - 1:
            messages.append({"role": "assistant", "content": turn.action or ""})
    return messages


def render_training_chunks(request: str, turns: list[Turn], action_names: list[str], window: int) -> list[list[dict]]:
    """Whole-episode multi-turn samples: one conversation per window, every action an assistant turn."""
    chunks = []
    step = max(window, 1) if window > 0 else max(len(turns), 1)
    for start in range(0, len(turns), step):
        part = turns[start : start + step]
        messages = [{"role": "system", "content": system_prompt(action_names)}]
        for k, turn in enumerate(part):
            messages.append({"role": "user", "content": user_content(request, turn, k == 0)})
            messages.append({"role": "assistant", "content": turn.action or ""})
        chunks.append(messages)
    return chunks
