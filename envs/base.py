"""The environment seam: every world implements `Environment`.

An environment computes its own verdict (`success`, `progress`); agents may *claim* completion,
but only the environment decides whether the task was done.
"""
from __future__ import annotations

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


@dataclass
class Action:
    """A grounded action: a name from the action space plus arguments (empty for BabyAI)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        return self.name if not self.arguments else f"{self.name} {self.arguments}"


@dataclass
class StepResult:
    observation: Observation
    reward: float
    feedback: str  # human-readable consequence of the action ("you moved forward", "blocked by a wall")
    success: bool  # environment-verified task success
    terminated: bool  # the environment ended the episode (success or irrecoverable failure)
    progress: float = 0.0  # 0..1, environment's own measure of partial completion


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

    @property
    def success(self) -> bool: ...

    def close(self) -> None: ...


class Expert(Protocol):
    """An expert that knows the environment's internals (e.g. the BabyAI bot)."""

    def act(self, env: Environment) -> Action: ...
