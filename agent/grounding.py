"""Grounding: turn free-form model output into a valid action of the environment, or explain why not."""
from __future__ import annotations

import re
from dataclasses import dataclass

from envs.base import Action

# Common phrasings a model (or a human) uses for BabyAI's text actions.
ALIASES = {
    "left": "turn left",
    "right": "turn right",
    "forward": "go forward",
    "move forward": "go forward",
    "pickup": "pick up",
    "pick": "pick up",
    "open": "toggle",
    "finish": "done",
    "stop": "done",
}


@dataclass
class Grounded:
    action: Action | None
    error: str = ""  # feedback for the model when action is None


def ground_text_action(raw: str, valid: list[str]) -> Grounded:
    text = (raw or "").strip().splitlines()[0].strip().lower() if (raw or "").strip() else ""
    text = re.sub(r"[^a-z ]+", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    if not (raw or "").strip():
        return Grounded(None, f"empty action; reply with one of: {', '.join(valid)}")
    candidate = text if text in valid else ALIASES.get(text)
    if candidate is None:
        # accept an action name embedded in a sentence, e.g. "i will go forward"
        hits = [v for v in valid if re.search(rf"\b{re.escape(v)}\b", text)]
        candidate = hits[0] if len(hits) == 1 else None
    if candidate is None or candidate not in valid:
        return Grounded(None, f"invalid action {raw.strip()[:40]!r}; reply with one of: {', '.join(valid)}")
    return Grounded(Action(candidate))
