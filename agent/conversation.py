"""Prompts per action-space kind. Text spaces (BabyAI) render with agent/prompt.py, exactly as
training does; tool spaces keep an OpenAI conversation: user turns, assistant tool calls, tool results.

The runner holds one of these per episode and never looks at the environment's name.
"""
from __future__ import annotations

import json

from agent.grounding import Grounding
from agent.policies import PolicyOutput
from agent.prompt import Turn, render_messages
from envs.base import ActionSpace, Observation


def output_text(output) -> str:
    """A policy output as one string (raw_output in records, retry transcripts)."""
    return output.to_text() if isinstance(output, PolicyOutput) else (output or "")


class TextConversation:
    """Windowed (state, feedback, action) turns rendered by training's renderer."""

    def __init__(self, request: str, window: int, focus: bool = True) -> None:
        self.request, self.window, self.focus = request, window, focus
        self.turns: list[Turn] = []

    def observe(self, obs: Observation, feedback: str) -> None:
        self.turns.append(Turn(state=obs.state, feedback=feedback))

    def render(self, space: ActionSpace) -> list[dict]:
        return render_messages(self.request, self.turns, space.names, self.window, self.focus)

    def retry(self, output, error: str) -> list[dict]:
        # The retry sees its bad output and why it was rejected; history stays clean.
        return [{"role": "assistant", "content": output_text(output)}, {"role": "user", "content": error}]

    def record(self, action_text: str, grounding: Grounding | None, results: list[str]) -> None:
        self.turns[-1].action = action_text


class ToolConversation:
    """The OpenAI chat a tool-calling model sees; grows over the whole episode like BFCL's.
    `recent_only` (memory switched off): the prompt keeps the requests and the latest exchange only."""

    def __init__(self, system: str = "", recent_only: bool = False) -> None:
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self._step, self._last_obs = 0, None
        self.recent_only, self._asked = recent_only, set(range(len(self.messages)))  # system and request turns

    def observe(self, obs: Observation, feedback: str) -> None:
        # After a rejected or blocked step the observation is the same object: its user turn is
        # already in the conversation.
        if obs is not self._last_obs:
            self._asked.update(range(len(self.messages), len(self.messages) + len(obs.user_messages)))
            self.messages += [{"role": "user", "content": m} for m in obs.user_messages]
        self._last_obs = obs
        self._step += 1

    def render(self, space: ActionSpace) -> list[dict]:
        if not self.recent_only:
            return list(self.messages)
        last = max((i for i, m in enumerate(self.messages) if m["role"] == "assistant"), default=len(self.messages))
        return [m for i, m in enumerate(self.messages) if i in self._asked or i >= last]

    def retry(self, output, error: str) -> list[dict]:
        return [{"role": "assistant", "content": output_text(output)}, {"role": "user", "content": error}]

    def record(self, action_text: str, grounding: Grounding | None, results: list[str]) -> None:
        """grounding None: the output was rejected (action_text is the raw output, results[0] the error)."""
        if grounding is None:
            self.messages += self.retry(action_text, results[0] if results else "")
            return
        if not grounding.calls:  # a closing message
            self.messages.append({"role": "assistant", "content": action_text})
            return
        # grounding succeeded, so every call is valid: calls[i] is actions[i]
        ids = [c.get("id") or f"call_{self._step}_{i}" for i, c in enumerate(grounding.calls)]
        self.messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": i, "type": "function", "function": {"name": a.name, "arguments": json.dumps(a.arguments, ensure_ascii=False)}}
            for i, a in zip(ids, grounding.actions)]})
        self.messages += [{"role": "tool", "tool_call_id": i, "content": r} for i, r in zip(ids, results)]


def conversation_for(space: ActionSpace, request: str, window: int, recent_only: bool = False, focus: bool = True):
    """recent_only: memory is switched off (text spaces get it through window=1); focus: text views are
    shown focused on the request (agent/prompt.py focus_view)."""
    if space.kind == "text":
        return TextConversation(request, window, focus)
    if space.kind == "tools":
        return ToolConversation(recent_only=recent_only)
    raise ValueError(f"unknown action space kind {space.kind!r}: expected 'text' or 'tools'")
