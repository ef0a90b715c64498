"""The environment seam: every world implements `Environment`.

An environment computes its own verdict (`success`, `progress`); agents may *claim* completion,
but only the environment decides whether the task was done.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Task:
    """One reproducible task: an environment variant plus the seed that fixes its layout."""

    env: str  # registry family, e.g. "babyai"
    level: str  # variant inside the family, e.g. "BabyAI-GoToLocal-v0"
    seed: int
    split: str = "train"  # "train" or "test": seed ranges are disjoint per split

    @property
    def task_id(self) -> str:
        return f"{self.level}/{self.seed}"


@dataclass
class Observation:
    request: str  # what the user asked for (the mission)
    state: str  # the state rendered as text, exactly what a model sees
    info: dict[str, Any] = field(default_factory=dict)
    # Multi-turn environments: user messages that arrive with this observation (a new turn); the
    # agent shows them as user turns of its conversation. Empty for single-request worlds.
    user_messages: list[str] = field(default_factory=list)


@dataclass
class Action:
    """A grounded action: a name from the action space plus arguments (empty for BabyAI)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        return self.name if not self.arguments else f"{self.name} {self.arguments}"


@dataclass
class ActionSpace:
    """What an agent may do, as the environment declares it; grounding validates against it.

    kind "text":  a reply is one of `names` (BabyAI: "turn left", ..., "done").
    kind "tools": a reply is OpenAI tool calls to `tools` (JSON-schema parameters); a plain-text
                  reply grounds to the action `message_action` (content in arguments["content"]).
    """

    kind: str  # "text" | "tools"
    names: list[str]  # valid action / function names in the current state
    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI tool schemas (kind "tools")
    claims: dict[str, str] = field(default_factory=dict)  # action name -> claim ("done" | "give_up")
    message_action: str = ""  # kind "tools": the action a plain-text reply becomes ("" = not allowed)
    # True when the request comes in turns: a claim (a plain-text reply) closes the current turn and
    # the environment decides whether another turn follows; otherwise a claim ends the episode.
    turns: bool = False
    # Parameter schemas grounding validates against instead of a tool's own (name -> JSON schema),
    # for tools whose shipped docs are stricter than the environment's own reference data.
    validation: dict[str, dict[str, Any]] = field(default_factory=dict)


def action_space_of(env: "Environment") -> ActionSpace:
    """The env's declared action space; envs that only list names get a text space over them."""
    declared = getattr(env, "action_space", None)
    if callable(declared):
        return declared()
    names = env.action_names()
    return ActionSpace(kind="text", names=names, claims={"done": "done"} if "done" in names else {})


@dataclass
class StepResult:
    observation: Observation
    reward: float
    feedback: str  # human-readable consequence of the action ("you moved forward", "blocked by a wall")
    success: bool  # environment-verified task success
    terminated: bool  # the environment ended the episode (success or irrecoverable failure)
    progress: float = 0.0  # 0..1, environment's own measure of partial completion
    info: dict[str, Any] = field(default_factory=dict)  # env-specific verdict details (per-turn checks)


@runtime_checkable
class Environment(Protocol):
    """reset(task) -> Observation; step(action) -> StepResult; the env alone says success."""

    name: str

    def reset(self, task: Task) -> Observation: ...

    def step(self, action: Action) -> StepResult: ...

    def action_names(self) -> list[str]:
        """Valid action names in the current state (the grounding layer validates against these)."""
        ...

    def action_safety(self, action: Action) -> str:
        """'allowed', 'confirm' or 'forbidden' for this action in this environment."""
        ...

    # Optional, found with getattr by the agent:
    #   action_space() -> ActionSpace       (default: a text space over action_names())
    #   precondition(action) -> str         (why `action` cannot run now; "" when it can)
    #   rebuildable = True                  (reset(task) + the same actions rebuild the same state: the
    #   state_digest() -> str                agent API rebuilds live sessions after a restart from their
    #                                        recorded actions and checks this digest after every step)

    @property
    def success(self) -> bool: ...

    def close(self) -> None: ...


def digest(*parts: Any) -> str:
    """A short deterministic hash of JSON-able parts (bytes hashed as they are): what `state_digest()`
    returns. Equal states give equal digests in any process; a changed part changes it."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, ensure_ascii=False, default=repr).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def rebuildable(env: "Environment") -> bool:
    """The environment declares that its state can be rebuilt from (task, actions) and digested."""
    return bool(getattr(env, "rebuildable", False)) and callable(getattr(env, "state_digest", None))


class Expert(Protocol):
    """An expert that knows the environment's internals (e.g. the BabyAI bot)."""

    def act(self, env: Environment) -> Action: ...
